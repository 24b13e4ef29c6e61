// A store down at enqueue: a clear StoreUnavailable, and nothing left behind (no `queued`
// document without its id in Redis, no id without its document). Redis here is a redis-server of
// the test's own, killed, frozen and restarted. The one exception, said in the error: a job whose
// dependency had ended, queued in MongoDB by the settling, stays for mrq's maintenance to push.

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { StoreUnavailable } from '../src/index.js';
import { freePort, keysOf, ownPrefix, rawJobs, rawRedis, startRedisServer, testClient } from './helpers.js';

const PATH = 'tests.tasks.general.Echo';
/** @type {Awaited<ReturnType<typeof rawJobs>>} */ let raw;

before(async () => {
  raw = await rawJobs();
});
after(async () => {
  await raw?.close();
});

/** @param {string} queue */
async function storedOn(queue) {
  return (await raw.jobs.find({ queue }).toArray()).map((doc) => doc.params);
}

test('Redis killed between two jobs: the second throws StoreUnavailable, its document is removed', async () => {
  const redis = await startRedisServer();
  const client = testClient({ redis: redis.url, redisPrefix: ownPrefix('outage'), redisTimeout: 1000 });
  const queue = 'node_outage_killed';
  try {
    await client.queueJob(PATH, { n: 'before' }, { queue });
    await redis.stop();
    const started = Date.now();
    await assert.rejects(client.queueJobs(PATH, [{ n: 'during 1' }, { n: 'during 2' }], { queue }), (error) => {
      assert.ok(error instanceof StoreUnavailable, String(error));
      assert.equal(error.store, 'Redis');
      assert.match(error.message, new RegExp(`^cannot reach Redis at ${redis.url}: .+\\. Is it running, at that ` +
        'address\\? \\(MRQ_REDIS or the `redis` option sets it\\)$'));
      return true;
    });
    const elapsed = Date.now() - started;
    // Retries 50, 100, 200, 400 ms apart; the next wait would pass the 1 s redisTimeout (as in Python).
    assert.ok(elapsed >= 700 && elapsed < 5000, `retried for about the redisTimeout (1 s), took ${elapsed} ms`);
    assert.deepEqual(await storedOn(queue), [{ n: 'before' }], 'the failed jobs left no document');
  } finally {
    await client.close();
    await redis.stop();
  }
});

test('Redis back after an outage: the same client queues again (it reconnects)', async () => {
  const first = await startRedisServer();
  const client = testClient({ redis: first.url, redisPrefix: ownPrefix('outage'), redisTimeout: 1000 });
  const queue = 'node_outage_back';
  try {
    await client.queueJob(PATH, { n: 1 }, { queue });
    await first.stop();
    await assert.rejects(client.queueJob(PATH, { n: 2 }, { queue }), StoreUnavailable);
    const second = await startRedisServer(Number(new URL(first.url).port));
    try {
      const id = await client.queueJob(PATH, { n: 3 }, { queue });
      const redis = await rawRedis(second.url);
      try {
        assert.deepEqual(await redis.lRange(`{${ownPrefix('outage')}:q:${queue}}:ids`, 0, -1), [id]);
      } finally {
        await redis.close();
      }
    } finally {
      await second.stop();
    }
    assert.deepEqual(await storedOn(queue), [{ n: 1 }, { n: 3 }]);
  } finally {
    await client.close();
  }
});

test('Redis frozen (answers nothing): the push gives up after redisTimeout, the document is removed', async () => {
  const redis = await startRedisServer();
  const client = testClient({ redis: redis.url, redisPrefix: ownPrefix('outage'), redisTimeout: 1000 });
  const queue = 'node_outage_frozen';
  try {
    await client.queueJob(PATH, { n: 'before' }, { queue });
    redis.freeze();
    const started = Date.now();
    await assert.rejects(client.queueJob(PATH, { n: 'frozen' }, { queue }), (error) => {
      assert.ok(error instanceof StoreUnavailable, String(error));
      assert.match(error.message, /cannot reach Redis/);
      return true;
    });
    assert.ok(Date.now() - started < 5000, `gave up after ${Date.now() - started} ms`);
    redis.thaw();
    const id = await client.queueJob(PATH, { n: 'after' }, { queue });
    assert.match(id, /^[0-9a-f]{24}$/);
    const params = await storedOn(queue);
    assert.deepEqual(params, [{ n: 'before' }, { n: 'after' }]);
  } finally {
    redis.thaw();
    await client.close();
    await redis.stop();
  }
});

test('Redis never reachable: StoreUnavailable, no document', async () => {
  const port = await freePort();
  const client = testClient({ redis: `redis://127.0.0.1:${port}/0`, redisPrefix: ownPrefix('outage'), redisTimeout: 500 });
  const queue = 'node_outage_never';
  try {
    await assert.rejects(client.queueJob(PATH, { n: 1 }, { queue }),
      new RegExp(`cannot reach Redis at redis://127\\.0\\.0\\.1:${port}/0: .*ECONNREFUSED`));
    assert.deepEqual(await storedOn(queue), []);
  } finally {
    await client.close();
  }
});

test('MongoDB unreachable: StoreUnavailable, nothing pushed in Redis', async () => {
  const port = await freePort();
  const prefix = ownPrefix('outage-mongo');
  const client = testClient({ mongodb: `mongodb://user:s3cret@127.0.0.1:${port}/jobs`, redisPrefix: prefix,
    mongodbTimeout: 500 });
  try {
    await assert.rejects(client.queueJob(PATH, { n: 1 }), (error) => {
      assert.ok(error instanceof StoreUnavailable, String(error));
      assert.equal(error.store, 'MongoDB');
      assert.match(error.message, new RegExp(`^cannot reach MongoDB at mongodb://user:\\*\\*\\*@127\\.0\\.0\\.1:${port}/jobs: ` +
        'no server answered within 0\\.5s'));
      assert.doesNotMatch(error.message, /s3cret/);
      return true;
    });
    await assert.rejects(client.getJob('0123456789abcdef01234567'), StoreUnavailable);
    const redis = await rawRedis();
    try {
      assert.deepEqual(await keysOf(redis, prefix), []);
    } finally {
      await redis.close();
    }
  } finally {
    await client.close();
  }
});

test('unix:// URIs (redis-py form: unix:///path?db=N) reach Redis through its socket', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'mrq-node-'));
  const socket = join(dir, 'redis.sock');
  const redis = await startRedisServer(undefined, ['--unixsocket', socket, '--requirepass', 'p@ss']);
  /** @type {import('../src/index.js').Client|undefined} */
  let client;
  try {
    client = testClient({ redis: `unix://:p%40ss@${socket}?db=3`, redisPrefix: ownPrefix('unix') });
    const id = await client.queueJob(PATH, { n: 1 }, { queue: 'node_unix' });
    const raw = await rawRedis(`redis://:p%40ss@${new URL(redis.url).host}/3`);
    try {
      assert.deepEqual(await raw.lRange(`{${ownPrefix('unix')}:q:node_unix}:ids`, 0, -1), [id]);
    } finally {
      await raw.close();
    }
    assert.deepEqual(await storedOn('node_unix'), [{ n: 1 }]);
  } finally {
    await client?.close();
    await redis.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

test('Redis down: a job that waits needs no push; one whose dependency ended is stored queued, and the error says so', async () => {
  const worker = testClient(); // the worker's stores: runs the dependency that ends
  const ended = await worker.queueJob(PATH, { n: 'dependency' });
  const redis = await startRedisServer();
  const prefix = ownPrefix('outage-deps');
  const client = testClient({ redis: redis.url, redisPrefix: prefix, redisTimeout: 500 });
  const queue = 'node_outage_deps';
  try {
    const pending = await client.queueJob(PATH, { n: 'pending' }, { queue });
    assert.equal((await worker.waitJob(ended, { timeout: 30_000, pollInterval: 20 })).status, 'success');
    await redis.stop();
    const waits = await client.queueJob(PATH, { n: 'waits' }, { queue, dependsOn: [pending] });
    assert.equal((await client.getJob(waits))?.status, 'waiting');
    /** @type {string[]} */ let queuedIds = [];
    await assert.rejects(client.queueJob(PATH, { n: 'settled' }, { queue, dependsOn: [ended] }), (error) => {
      assert.ok(error instanceof StoreUnavailable, String(error));
      assert.equal(error.store, 'Redis');
      assert.match(error.message, /^cannot reach Redis at .*; the job is stored \(waiting for their dependencies, or queued\) and mrq's RequeueLostJobs settles or pushes them/);
      queuedIds = error.queuedIds;
      return true;
    });
    assert.equal(queuedIds.length, 1);
    const settled = await client.getJob(queuedIds[0]);
    assert.deepEqual([settled?.status, settled?.params], ['queued', { n: 'settled' }],
      'queued in MongoDB (RequeueLostJobs pushes it), not removed: its dependency knows it');
    assert.deepEqual((await worker.getJob(ended))?.dependents, [queuedIds[0]]);
  } finally {
    await client.close();
    await worker.close();
    await redis.stop();
  }
});
