// Where the stores are: options first, then the MRQ_* environment variables mrq's Python
// commands read, then mrq's defaults (mrq/options.py). Timeouts are milliseconds here (the
// environment variables keep mrq's seconds).

import { ConfigError } from './errors.js';
import { REDIS_PREFIX } from './protocol.js';

export const DEFAULTS = Object.freeze({
  redis: 'redis://127.0.0.1:6379/0',
  mongodb: 'mongodb://127.0.0.1:27017/mrq',
  redisPrefix: 'mrq',
  redisTimeout: 10_000,
  mongodbTimeout: 5_000,
  defaultJobTtl: 180 * 24 * 3600 * 1000,
});

const PASSWORD_IN_URI = /([a-z][a-z0-9+.-]*:\/\/)([^:@/]*):([^@/]*)@/gi;

/** The URI with its password replaced by ***, safe to print. @param {string} uri */
export function redactUri(uri) {
  return uri.replace(PASSWORD_IN_URI, '$1$2:***@');
}

/** A free text (a driver's message) without the password of `uri`. @param {string} text @param {string} uri */
export function redactText(text, uri) {
  let out = redactUri(text);
  const match = /^[a-z][a-z0-9+.-]*:\/\/[^:@/]*:([^@/]*)@/i.exec(uri);
  if (match && match[1]) {
    for (const secret of new Set([match[1], safeDecode(match[1])])) out = out.split(secret).join('***');
  }
  return out;
}

/** @param {string} text */
function safeDecode(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/**
 * @typedef {object} ClientOptions
 * @property {string} [redis] Redis URI (redis://, rediss://, unix://); default MRQ_REDIS, else redis://127.0.0.1:6379/0
 * @property {string} [mongodb] MongoDB URI of the jobs database; default MRQ_MONGODB_JOBS, else mongodb://127.0.0.1:27017/mrq
 * @property {string} [redisPrefix] mrq's `redis_prefix`; default MRQ_REDIS_PREFIX, else "mrq"
 * @property {number} [redisTimeout] ms a Redis push keeps retrying (and one attempt may take); default MRQ_REDIS_TIMEOUT (s), else 10000
 * @property {number} [mongodbTimeout] ms before MongoDB server selection gives up; default MRQ_MONGODB_TIMEOUT (s), else 5000
 * @property {number} [defaultJobTtl] ms a job cancelled because a dependency failed is kept (mrq's
 *   default_job_ttl); default MRQ_DEFAULT_JOB_TTL (s), else 180 days
 * @property {Record<string, string|undefined>} [env] where to read MRQ_* variables (default process.env)
 */

/**
 * @typedef {object} Settings
 * @property {string} redis
 * @property {string} mongodb
 * @property {string} redisPrefix
 * @property {number} redisTimeout
 * @property {number} mongodbTimeout
 * @property {number} defaultJobTtl
 * @property {string} databaseName
 */

/** @param {ClientOptions} [options] @returns {Settings} */
export function resolveSettings(options = {}) {
  if (typeof options !== 'object' || options === null) throw new ConfigError('createClient takes an options object');
  const env = options.env ?? process.env;
  const pick = (/** @type {unknown} */ value, /** @type {string} */ name) =>
    value ?? (env[name] === undefined || env[name] === '' ? undefined : env[name]);
  const redis = String(pick(options.redis, 'MRQ_REDIS') ?? DEFAULTS.redis);
  const mongodb = String(pick(options.mongodb, 'MRQ_MONGODB_JOBS') ?? DEFAULTS.mongodb);
  const redisPrefix = String(pick(options.redisPrefix, 'MRQ_REDIS_PREFIX') ?? DEFAULTS.redisPrefix);
  const redisTimeout = timeout(options.redisTimeout, env.MRQ_REDIS_TIMEOUT, DEFAULTS.redisTimeout, 'redisTimeout');
  const mongodbTimeout = timeout(options.mongodbTimeout, env.MRQ_MONGODB_TIMEOUT, DEFAULTS.mongodbTimeout,
    'mongodbTimeout');
  const defaultJobTtl = duration(options.defaultJobTtl, env.MRQ_DEFAULT_JOB_TTL, DEFAULTS.defaultJobTtl, 'defaultJobTtl', 0);

  const scheme = redis.includes('://') ? redis.split('://', 1)[0].toLowerCase() : '';
  if (scheme === 'redis+sentinel' || scheme === 'redis+cluster') {
    throw new ConfigError(`redis: ${scheme}:// is not supported by mrq-client yet (redis://, rediss:// or unix:// only)`);
  }
  if (!['redis', 'rediss', 'unix'].includes(scheme)) {
    throw new ConfigError(`redis: expected redis://, rediss:// or unix://, got ${JSON.stringify(redactUri(redis))}`);
  }
  try {
    redisOptions(redis);
  } catch {
    throw new ConfigError(`redis: invalid URI ${JSON.stringify(redactUri(redis))}`);
  }
  if (!mongodb.startsWith('mongodb://') && !mongodb.startsWith('mongodb+srv://')) {
    throw new ConfigError(`mongodb: expected a mongodb:// URI, got ${JSON.stringify(redactUri(mongodb))}`);
  }
  if (!REDIS_PREFIX.test(redisPrefix)) {
    throw new ConfigError(
      `redis prefix ${JSON.stringify(redisPrefix)}: use 1-64 letters, digits, '_', '-' or '.' (no spaces, ':' or braces)`,
    );
  }
  return { redis, mongodb, redisPrefix, redisTimeout, mongodbTimeout, defaultJobTtl, databaseName: databaseName(mongodb) };
}

/** @param {unknown} option ms @param {string|undefined} envSeconds @param {number} fallback @param {string} name */
function timeout(option, envSeconds, fallback, name) {
  return duration(option, envSeconds, fallback, name, 100);
}

/** Milliseconds from the option (ms), else the variable (s), else `fallback`; at least `minimum`.
 * @param {unknown} option @param {string|undefined} envSeconds @param {number} fallback @param {string} name
 * @param {number} minimum */
function duration(option, envSeconds, fallback, name, minimum) {
  let ms = fallback;
  if (option !== undefined && option !== null) ms = Number(option);
  else if (envSeconds !== undefined && envSeconds !== '') ms = Number(envSeconds) * 1000;
  if (!Number.isFinite(ms) || ms < minimum) {
    throw new ConfigError(`${name}: expected at least ${minimum} ms, got ${JSON.stringify(option ?? envSeconds)}`);
  }
  return ms;
}

/** The database a MongoDB URI names, "mrq" if none (mrq/connections.py mongo_database_name).
 * @param {string} uri */
export function databaseName(uri) {
  const rest = uri.slice(uri.indexOf('://') + 3);
  const slash = rest.indexOf('/');
  if (slash < 0) return 'mrq';
  const path = rest.slice(slash + 1).split('?', 1)[0].split('#', 1)[0];
  return safeDecode(path) || 'mrq';
}

/**
 * node-redis options for a URI: redis:// and rediss:// as node-redis reads them, unix:// as
 * redis-py does (`unix://[[user][:password]@]/path/to.sock?db=N[&password=...]`).
 * @param {string} uri
 */
export function redisOptions(uri) {
  if (!uri.toLowerCase().startsWith('unix://')) {
    new URL(uri); // throws on a malformed URI
    return { url: uri };
  }
  const [location, query = ''] = uri.slice('unix://'.length).split(/\?(.*)/s, 2);
  const at = location.lastIndexOf('@');
  const userinfo = at >= 0 && !location.slice(0, at).includes('/') ? location.slice(0, at) : '';
  const path = userinfo || at === 0 ? location.slice(at + 1) : location;
  if (!path.startsWith('/')) throw new Error('unix:// needs an absolute socket path');
  const params = new URLSearchParams(query);
  const [user, password] = userinfo.includes(':') ? userinfo.split(/:(.*)/s, 2) : [userinfo, ''];
  const db = params.get('db');
  if (db !== null && !/^\d+$/.test(db)) throw new Error('db must be a number');
  return {
    socket: { path: safeDecode(path) },
    database: db === null ? undefined : Number(db),
    username: user ? safeDecode(user) : undefined,
    password: password ? safeDecode(password) : (params.get('password') ?? undefined),
  };
}
