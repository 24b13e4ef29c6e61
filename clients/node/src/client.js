// The producer: queue jobs exactly as mrq's Python queue_jobs does (mrq/queue/producer.py),
// read them back. docs/storage.md is the contract this follows, step by step:
//
//   1. validate everything (path, queue, every params object) before anything is stored;
//   2. insert the job documents (status `queued`) in `mrq_jobs`, a batch at a time;
//   3. push the batch's ids in one non-transactional Redis pipeline: RPUSH on the queue's list,
//      the queue registry note (at most once a minute per client), the per-minute stats counter
//      (and its expiry), then PUBLISH the wake-up;
//   4. if Redis stays unreachable for `redisTimeout`, delete the batch's documents (still
//      `queued`) and throw: an error means "not queued".
//
// A job queued with `dependsOn` is stored `waiting` and registered on its dependencies instead of
// steps 3 and 4 (src/dependencies.js).

import { setTimeout as sleep } from 'node:timers/promises';

import { MongoClient, ObjectId } from 'mongodb';
import { createClient as createRedisClient } from 'redis';

import { checkDependenciesExist, dependencyIds, register, waitingFields } from './dependencies.js';
import { checkSize, newJob, plainJob, storableParams } from './documents.js';
import {
  ConfigError, InvalidJob, InvalidJobId, JobNotFound, JobWaitTimeout, MrqError, StoreUnavailable, describe,
} from './errors.js';
import {
  DEFAULT_QUEUE, FINAL_STATUSES, JOBS_COLLECTION, Keys, QUEUED, STATS_RETENTION, WAITING, queueKind, queueParts,
  validateJobQueue, validateTaskPath,
} from './protocol.js';
import { redactText, redactUri, redisOptions, resolveSettings } from './settings.js';

/** Registry notes and stats expiries are written at most once per this many ms (mrq Store.note_once). */
const NOTE_PERIOD = 60_000;
const WHERE_SET = { Redis: 'MRQ_REDIS or the `redis` option', MongoDB: 'MRQ_MONGODB_JOBS or the `mongodb` option' };
const HEX_ID = /^[0-9a-fA-F]{24}$/;

/**
 * @typedef {import('./settings.js').ClientOptions} ClientOptions
 * @typedef {Record<string, unknown> & {id: string, status: string}} JobDocument
 * @typedef {object} QueueOptions
 * @property {string} [queue] default "default"
 * @property {Array<string|ObjectId>} [dependsOn] ids of the jobs to wait for (at most 10,000)
 * @property {"cancel"|"run"} [onDependencyFailure] what the job does when one of them ends otherwise than
 *   success: be cancelled (default) or run anyway
 */

export class Client {
  /** @type {import('./settings.js').Settings} */
  #settings;
  /** @type {MongoClient} */
  #mongo;
  /** @type {import('mongodb').Collection} */
  #jobs;
  /** @type {import('./dependencies.js').DependencyStore} */
  #dependencyStore;
  /** @type {any} a node-redis client, replaced after a failure */
  #redis = null;
  /** @type {Promise<any>|null} */
  #connecting = null;
  /** @type {Map<string, number>} */
  #noted = new Map();
  #closed = false;

  /** @param {ClientOptions} [options] */
  constructor(options = {}) {
    this.#settings = resolveSettings(options);
    const ms = this.#settings.mongodbTimeout;
    try {
      this.#mongo = new MongoClient(this.#settings.mongodb, {
        serverSelectionTimeoutMS: ms,
        connectTimeoutMS: ms,
        socketTimeoutMS: Math.max(ms * 6, 30_000),
        appName: 'mrq-client',
      });
    } catch (error) {
      throw new ConfigError(`invalid MongoDB URI ${redactUri(this.#settings.mongodb)}: ` +
        redactText(firstLine(error), this.#settings.mongodb));
    }
    this.#jobs = this.#mongo.db(this.#settings.databaseName).collection(JOBS_COLLECTION);
    this.keys = new Keys(this.#settings.redisPrefix);
    this.#dependencyStore = {
      jobs: this.#jobs,
      defaultJobTtl: this.#settings.defaultJobTtl,
      push: (queue, ids) => this.#pushRetrying(queue, ids),
    };
  }

  /** The resolved settings, passwords hidden. */
  get settings() {
    const { redis, mongodb, ...rest } = this.#settings;
    return { ...rest, redis: redactUri(redis), mongodb: redactUri(mongodb) };
  }

  /**
   * Queue one job; resolves to its id (24 hex characters).
   * @param {string} path dotted path of the task, e.g. "tasks.io.Fetch"
   * @param {Record<string, unknown>} params a plain object
   * @param {QueueOptions} [options] queue: default "default" (a task's TASKS queue in Python
   *   config is not read here: name it); dependsOn, onDependencyFailure: see queueJobs
   * @returns {Promise<string>}
   */
  async queueJob(path, params, options = {}) {
    return (await this.queueJobs(path, [params], options))[0];
  }

  /**
   * Queue one job per params object; resolves to their ids, in order. Every params object is
   * checked before anything is stored. One insert and one Redis pipeline per batch.
   *
   * `dependsOn` (job ids): every job waits (status `waiting`, pushed nowhere) until each of those
   * ended, and is queued when they all ended `success`; when one ends otherwise it is cancelled
   * with the reason, or with `onDependencyFailure: "run"` it runs anyway. A dependency that ended
   * already settles the jobs before this resolves. docs/workflows.md.
   * @param {string} path
   * @param {Array<Record<string, unknown>>} paramsList
   * @param {QueueOptions & {batchSize?: number}} [options]
   * @returns {Promise<string[]>}
   */
  async queueJobs(path, paramsList, options = {}) {
    this.#checkOpen();
    const { queue, docs, batchSize, dependsOn } = prepareJobs(path, paramsList, options);
    if (dependsOn.length) await this.#checkDependencies(dependsOn);
    /** @type {string[]} */
    const queued = [];
    for (let start = 0; start < docs.length; start += batchSize) {
      const batch = docs.slice(start, start + batchSize);
      const ids = batch.map((doc) => doc._id);
      await this.#insert(batch, start, queued);
      if (dependsOn.length) await this.#register(ids, dependsOn, queued);
      else await this.#pushIds(queue, ids, queued);
      queued.push(...ids.map((id) => id.toHexString()));
    }
    return queued;
  }

  /**
   * The job's document as a plain object (`id` as a hex string, dates as Date objects), or null
   * when there is no such job (never queued, or expired).
   * @param {string} jobId
   * @returns {Promise<JobDocument|null>}
   */
  async getJob(jobId) {
    this.#checkOpen();
    const id = toObjectId(jobId);
    let doc;
    try {
      doc = await this.#jobs.findOne({ _id: id });
    } catch (error) {
      throw this.#mongoError(error);
    }
    return doc === null ? null : /** @type {JobDocument} */ (plainJob(doc));
  }

  /**
   * Resolves to the job's document once its status is final (success, failed, maxretries,
   * timeout, abort, cancel, interrupt); rejects with JobWaitTimeout after `timeout` ms, with
   * JobNotFound when the job does not exist.
   * @param {string} jobId
   * @param {{timeout?: number, pollInterval?: number}} [options] milliseconds; no timeout by default
   * @returns {Promise<JobDocument>}
   */
  async waitJob(jobId, options = {}) {
    const { timeout, pollInterval = 100 } = options;
    toObjectId(jobId);
    if (timeout !== undefined && !(Number(timeout) >= 0)) throw new MrqError(`timeout: expected ms >= 0, got ${timeout}`);
    if (!(Number(pollInterval) > 0)) throw new MrqError(`pollInterval: expected ms > 0, got ${pollInterval}`);
    const deadline = timeout === undefined ? Infinity : performance.now() + Number(timeout);
    for (;;) {
      const doc = await this.getJob(jobId);
      if (doc === null) throw new JobNotFound(String(jobId));
      if (FINAL_STATUSES.has(doc.status)) return doc;
      const left = deadline - performance.now();
      if (left <= 0) throw new JobWaitTimeout(String(jobId), doc.status, Number(timeout));
      await sleep(Math.min(Number(pollInterval), left));
    }
  }

  /** Close the connections. The client cannot be used afterwards. */
  async close() {
    if (this.#closed) return;
    this.#closed = true;
    const redis = this.#redis;
    this.#redis = null;
    if (redis) {
      try {
        if (redis.isReady) await redis.close();
        else redis.destroy();
      } catch {
        // already closed
      }
    }
    await this.#mongo.close();
  }

  // --- MongoDB ------------------------------------------------------------------------------------

  /** Insert one batch; a document the server refuses (a validator, a limit) throws InvalidJob
   * after the batch's documents are removed. @param {any[]} batch @param {number} start @param {string[]} queued */
  async #insert(batch, start, queued) {
    try {
      await this.#jobs.insertMany(batch, { ordered: true });
    } catch (error) {
      await this.#deleteQueued(batch.map((doc) => doc._id), [QUEUED, WAITING]);
      const first = writeErrors(error)[0];
      if (first) {
        const index = start + Number(first.index ?? 0);
        throw withQueued(new InvalidJob(`MongoDB refused job #${index}: ${first.errmsg ?? firstLine(error)}` +
          earlier(queued), { cause: error }), queued);
      }
      throw withQueued(this.#mongoError(error, queued), queued);
    }
  }

  /** Remove just-inserted documents that were never pushed (best effort: if MongoDB is down,
   * they stay `queued` and mrq's maintenance queues them). @param {ObjectId[]} ids
   * @param {string[]} [statuses] also `waiting`, for a batch refused before it was registered */
  async #deleteQueued(ids, statuses = [QUEUED]) {
    try {
      await this.#jobs.deleteMany({ _id: { $in: ids }, status: { $in: statuses } });
    } catch {
      // see above
    }
  }

  /** Every dependency must be a job in the store (InvalidJob otherwise). @param {ObjectId[]} dependsOn */
  async #checkDependencies(dependsOn) {
    try {
      await checkDependenciesExist(this.#jobs, dependsOn);
    } catch (error) {
      throw error instanceof MrqError ? error : this.#mongoError(error);
    }
  }

  /**
   * List a batch of waiting jobs on their dependencies and settle them for those that ended
   * already. The jobs are stored: if this fails they stay `waiting`, and mrq's RequeueLostJobs
   * settles them (so the error lists them in `queuedIds`).
   * @param {ObjectId[]} ids @param {ObjectId[]} dependsOn @param {string[]} queued
   */
  async #register(ids, dependsOn, queued) {
    try {
      await register(this.#dependencyStore, ids, dependsOn);
    } catch (error) {
      const stored = [...queued, ...ids.map((id) => id.toHexString())];
      if (this.#closed) throw withQueued(new MrqError('the client was closed while queueing', { cause: error }), stored);
      const cause = error instanceof MrqError ? error : this.#mongoError(error);
      const store = cause instanceof StoreUnavailable ? cause.store : 'MongoDB';
      throw withQueued(new StoreUnavailable(store, `${cause.message}; ${ids.length === 1 ? 'the job is' : `the ${ids.length} jobs of this batch are`} ` +
        "stored (waiting for their dependencies, or queued) and mrq's RequeueLostJobs settles or pushes them " +
        '(error.queuedIds lists every job stored)', { cause: error }), stored);
    }
  }

  /** @param {unknown} error @param {string[]} [queued] */
  #mongoError(error, queued = []) {
    const uri = this.#settings.mongodb;
    const err = /** @type {any} */ (error);
    let message;
    if (err?.name === 'MongoServerError') {
      message = `MongoDB at ${redactUri(uri)} refused the command: ${redactText(firstLine(err), uri)}`;
    } else {
      let reason = redactText(firstLine(err), uri).replace(/\.$/, '');
      if (err?.name === 'MongoServerSelectionError') {
        reason = `no server answered within ${this.#settings.mongodbTimeout / 1000}s (${reason})`;
      }
      message = `cannot reach MongoDB at ${redactUri(uri)}: ${reason}. Is it running, at that address? ` +
        `(${WHERE_SET.MongoDB} sets it)`;
    }
    return new StoreUnavailable('MongoDB', message + earlier(queued), { cause: error });
  }

  // --- Redis --------------------------------------------------------------------------------------

  /**
   * Push the ids of a just-inserted batch on their queue and wake the idle workers; if Redis stays
   * unreachable the batch's documents are removed and StoreUnavailable is thrown
   * (mrq/queue/producer.py _push_ids). @param {string} queue @param {ObjectId[]} ids @param {string[]} queued
   */
  async #pushIds(queue, ids, queued) {
    try {
      await this.#pushRetrying(queue, ids, queued);
    } catch (error) {
      if (error instanceof StoreUnavailable) await this.#deleteQueued(ids);
      throw withQueued(/** @type {Error} */ (error), queued);
    }
  }

  /**
   * Push ids (their documents say `queued`) and wake the idle workers, retrying for `redisTimeout`
   * ms; then StoreUnavailable. @param {string} queue @param {ObjectId[]} ids @param {string[]} [queued]
   */
  async #pushRetrying(queue, ids, queued = []) {
    const deadline = performance.now() + this.#settings.redisTimeout;
    let delay = 50;
    for (;;) {
      try {
        await this.#attempt(deadline, (redis) => this.#push(redis, queue, ids.map((id) => id.toHexString())));
        return;
      } catch (error) {
        if (this.#closed) throw new MrqError('the client was closed while queueing', { cause: error });
        if (performance.now() + delay < deadline) {
          await sleep(delay);
          delay = Math.min(delay * 2, 1000);
          continue;
        }
        const uri = this.#settings.redis;
        throw new StoreUnavailable('Redis', `cannot reach Redis at ${redactUri(uri)}: ` +
          `${redactText(firstLine(error), uri).replace(/\.$/, '')}. Is it running, at that address? ` +
          `(${WHERE_SET.Redis} sets it)${earlier(queued)}`, { cause: error });
      }
    }
  }

  /**
   * The writes of one push, in RegularQueue.add_push's order, then the wake-up, in one round trip.
   * @param {any} redis @param {string} queue @param {string[]} ids
   */
  async #push(redis, queue, ids) {
    const keys = this.keys;
    const { root, isSubqueue } = queueParts(queue);
    const now = Date.now();
    const minute = Math.floor(now / 60_000);
    const noteQueue = this.#due(`queue:${queue}`, now);
    const noteStats = this.#due(`stats:${minute}`, now);
    const pipe = redis.multi().rPush(keys.queueIds(queue), ids);
    if (noteQueue) { // mrq/queue/registry.py note
      pipe.zAdd(keys.knownQueues, { score: 0, value: queue });
      if (isSubqueue) {
        pipe.zAdd(keys.queuesSeen, { score: now / 1000, value: queue });
        pipe.sAdd(keys.subqueues(root), queue);
      }
    }
    pipe.hIncrBy(keys.stats(minute), `in:${queue}`, ids.length);
    if (noteStats) pipe.expire(keys.stats(minute), STATS_RETENTION);
    pipe.publish(keys.notifyChannel(queue), String(ids.length));
    const replies = await pipe.execAsPipeline();
    const failed = replies.find((/** @type {unknown} */ reply) => reply instanceof Error);
    if (failed) throw failed;
    // Noted only once written: a failed attempt's retry writes them again.
    if (noteQueue) this.#noted.set(`queue:${queue}`, now);
    if (noteStats) this.#noted.set(`stats:${minute}`, now);
  }

  /** @param {string} name @param {number} now */
  #due(name, now) {
    const last = this.#noted.get(name);
    return last === undefined || now - last >= NOTE_PERIOD || now < last;
  }

  /**
   * Run `fn` with a connected Redis client, giving up at `deadline`: a server that does not answer
   * (frozen, partitioned) fails the attempt, and its client is dropped so that the next attempt
   * connects afresh. @template T @param {number} deadline @param {(redis: any) => Promise<T>} fn @returns {Promise<T>}
   */
  async #attempt(deadline, fn) {
    const budget = Math.max(deadline - performance.now(), 250);
    /** @type {NodeJS.Timeout|undefined} */
    let timer;
    const expired = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${Math.round(budget)} ms`)), budget);
    });
    try {
      return await Promise.race([this.#redisClient().then(fn), expired]);
    } catch (error) {
      this.#dropRedis();
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  /** A ready node-redis client, connecting one when needed (one connection attempt at a time). */
  async #redisClient() {
    if (this.#redis?.isReady) return this.#redis;
    if (!this.#connecting) {
      this.#dropRedis();
      const client = createRedisClient({
        ...redisOptions(this.#settings.redis),
        disableOfflineQueue: true, // a command never waits for a reconnection: the attempt fails, the loop retries
        socket: {
          ...redisOptions(this.#settings.redis).socket,
          connectTimeout: Math.min(this.#settings.redisTimeout, 5000),
          reconnectStrategy: false, // reconnecting is #pushIds' business
        },
      });
      client.on('error', () => {}); // errors reach the callers through their commands
      this.#redis = client;
      this.#connecting = client.connect().then(() => client).finally(() => { this.#connecting = null; });
    }
    return this.#connecting;
  }

  #dropRedis() {
    const client = this.#redis;
    this.#redis = null;
    if (client) {
      try {
        client.destroy();
      } catch {
        // closed already
      }
    }
  }

  #checkOpen() {
    if (this.#closed) throw new MrqError('the client is closed');
  }
}

/**
 * Validate a queueing request and build its documents (mrq/queue/producer.py dependency_ids,
 * prepare_jobs): the queue, the documents, the batch size and the dependencies (ObjectIds).
 * @param {unknown} path @param {unknown} paramsList @param {QueueOptions & {batchSize?: number}} options
 */
export function prepareJobs(path, paramsList, options) {
  if (typeof options !== 'object' || options === null) throw new InvalidJob(`options must be an object, got ${describe(options)}`);
  const onFailure = options.onDependencyFailure ?? 'cancel';
  const dependsOn = dependencyIds(options.dependsOn, onFailure);
  validateTaskPath(path);
  const queue = validateJobQueue(options.queue ?? DEFAULT_QUEUE);
  const kind = queueKind(queue);
  if (kind !== 'regular' && dependsOn.length) {
    throw new InvalidJob(`dependsOn cannot be used on raw queue '${queue}': a raw queue holds parameters, not job ` +
      'documents, so nothing there can wait for other jobs (use a regular queue)');
  }
  if (kind !== 'regular') {
    const whose = queue.includes('/') ? 'its root name ends' : 'its name ends';
    throw new InvalidJob(`queue '${queue}' is a raw queue (${whose} in _${kind}): it takes raw parameters for ` +
      "a worker's RAW_QUEUES entry, not jobs (Python: queue_raw_jobs()). Queue jobs on a regular queue");
  }
  const batchSize = options.batchSize ?? 1000;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new InvalidJob(`batchSize must be an integer >= 1, got ${describe(batchSize)}`);
  if (!Array.isArray(paramsList)) throw new InvalidJob(`paramsList must be an array of params objects, got ${describe(paramsList)}`);
  const now = new Date();
  const docs = paramsList.map((params, index) => {
    const doc = newJob(new ObjectId(), /** @type {string} */ (path), storableParams(params, index), queue, now);
    if (dependsOn.length) Object.assign(doc, waitingFields(dependsOn, onFailure));
    checkSize(doc, index);
    return doc;
  });
  return { queue, docs, batchSize, dependsOn };
}

/** @param {unknown} jobId */
function toObjectId(jobId) {
  if (jobId instanceof ObjectId) return jobId;
  if (typeof jobId === 'string' && HEX_ID.test(jobId)) return ObjectId.createFromHexString(jobId);
  throw new InvalidJobId(jobId);
}

/** @param {unknown} error @returns {Array<{index?: number, errmsg?: string, code?: number}>} */
function writeErrors(error) {
  const found = /** @type {any} */ (error)?.writeErrors;
  if (!found) return [];
  return Array.isArray(found) ? found : [found];
}

/** An error of queueJobs, with `queuedIds`: the ids of the earlier batches, which were queued.
 * @template {Error} E @param {E} error @param {string[]} queued @returns {E} */
function withQueued(error, queued) {
  return Object.assign(error, { queuedIds: [...queued] });
}

/** @param {string[]} queued */
function earlier(queued) {
  return queued.length ? ` (${queued.length} jobs of earlier batches were queued)` : '';
}

/** @param {unknown} error */
function firstLine(error) {
  const err = /** @type {any} */ (error);
  const text = String(err?.message ?? err ?? '').trim() || err?.name || 'error';
  return text.split('\n', 1)[0].slice(0, 300);
}

/**
 * @param {ClientOptions} [options]
 * @returns {Client}
 */
export function createClient(options) {
  return new Client(options);
}
