// What the tests share: the stores they run against (from the environment: tests/test_node_client.py
// sets it, with a Python worker running), raw clients to look at what was written, a redis-server
// of a test's own. Nothing is skipped: a missing variable fails every test that needs it.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

import { MongoClient } from 'mongodb';
import { createClient as createRedisClient } from 'redis';

import { createClient } from '../src/index.js';

/** @param {string} name */
export function requiredEnv(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: these tests run against a real stack and a Python worker; run them with ` +
      '`pytest tests/test_node_client.py` (which sets MRQ_REDIS, MRQ_REDIS_PREFIX, MRQ_MONGODB_JOBS and ' +
      'MRQ_TEST_REFERENCE)');
  }
  return value;
}

export const env = {
  get redis() { return requiredEnv('MRQ_REDIS'); },
  get mongodb() { return requiredEnv('MRQ_MONGODB_JOBS'); },
  /** The prefix the Python worker uses. */
  get prefix() { return requiredEnv('MRQ_REDIS_PREFIX'); },
  /** What tests/test_node_client.py queued with Python's queue_jobs, for comparison. */
  get reference() { return JSON.parse(requiredEnv('MRQ_TEST_REFERENCE')); },
};

/** A Client on the test stores; `prefix` other than the worker's for tests no worker should see.
 * @param {import('../src/settings.js').ClientOptions} [options] */
export function testClient(options = {}) {
  return createClient({ redis: env.redis, mongodb: env.mongodb, redisPrefix: env.prefix, env: {}, ...options });
}

/** A prefix of this test's own (removed by tests/test_node_client.py: it starts with the worker's).
 * @param {string} name */
export function ownPrefix(name) {
  return `${env.prefix}-${name}`;
}

/** The jobs collection (and its database), straight from the driver (not through the client under test). */
export async function rawJobs() {
  const mongo = new MongoClient(env.mongodb, { serverSelectionTimeoutMS: 10_000 });
  await mongo.connect();
  return { jobs: mongo.db().collection('mrq_jobs'), db: mongo.db(), close: () => mongo.close() };
}

/** A plain node-redis client on the test Redis (or another). */
export async function rawRedis(url = env.redis) {
  const redis = createRedisClient({ url });
  redis.on('error', () => {});
  await redis.connect();
  return redis;
}

/** Every key under a prefix (both forms: `<p>:...` and the hash-tagged `{<p>:...`).
 * @param {any} redis @param {string} prefix @returns {Promise<string[]>} */
export async function keysOf(redis, prefix) {
  const found = [];
  for (const pattern of [`${prefix}:*`, `{${prefix}:*`]) {
    for await (const batch of redis.scanIterator({ MATCH: pattern, COUNT: 1000 })) found.push(...batch);
  }
  return found.sort();
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freePort() {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = /** @type {net.AddressInfo} */ (server.address());
  server.close();
  await once(server, 'close');
  return port;
}

/** @type {Set<import('node:child_process').ChildProcess>} */
const servers = new Set();
process.once('exit', () => {
  for (const proc of servers) proc.kill('SIGKILL');
});

/** A redis-server of the test's own (fault tests stop, freeze or restart it), loopback only, no
 * persistence. @param {number} [port] @param {string[]} [args] more options */
export async function startRedisServer(port, args = []) {
  port ??= await freePort();
  const binary = process.env.MRQ_TEST_REDIS_SERVER || 'redis-server';
  const proc = spawn(binary, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
    ...args], { stdio: 'ignore' });
  /** @type {Error|null} */
  let failed = null;
  proc.on('error', (error) => { failed = error; });
  proc.unref(); // never what keeps a test file running: killed on exit at the latest
  servers.add(proc);
  proc.once('exit', () => servers.delete(proc));
  const exited = once(proc, 'exit');
  const alive = () => proc.exitCode === null && proc.signalCode === null && !failed;
  const url = `redis://127.0.0.1:${port}/0`;
  const deadline = Date.now() + 10_000;
  while (!(await portOpen(port))) {
    if (!alive() || Date.now() > deadline) {
      throw new Error(`${binary} did not start on port ${port}${failed ? `: ${failed}` : ''} ` +
        '(MRQ_TEST_REDIS_SERVER names the binary)');
    }
    await sleep(20);
  }
  return {
    url,
    freeze: () => { if (alive()) proc.kill('SIGSTOP'); },
    thaw: () => { if (alive()) proc.kill('SIGCONT'); },
    stop: async () => {
      if (alive()) {
        proc.kill('SIGKILL');
        await exited;
      }
      for (let i = 0; i < 500 && await portOpen(/** @type {number} */ (port)); i++) await sleep(10);
    },
  };
}

/** @param {number} port */
function portOpen(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
  });
}

/**
 * Subscribes a duplicate of `redis` to the wake-up messages of `prefix`: each is pushed on
 * `messages` as [channel without the prefix, payload]. Returns the subscriber (close it after).
 * @param {any} redis
 * @param {string} prefix
 * @param {string[][]} messages
 */
export async function recordNotifications(redis, prefix, messages) {
  const subscriber = redis.duplicate();
  subscriber.on('error', () => {});
  await subscriber.connect();
  await subscriber.pSubscribe(`${prefix}:notify:*`, (/** @type {string} */ message, /** @type {string} */ channel) => {
    messages.push([channel.slice(prefix.length + 1), message]);
  });
  return subscriber;
}
