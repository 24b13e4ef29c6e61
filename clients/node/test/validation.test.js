// Bad input gets a clear error and stores nothing: task paths, queue names (judged as Python
// judges them: MRQ_TEST_REFERENCE.verdicts), raw queues, params, ids, settings.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';

import { ObjectId } from 'mongodb';

import {
  ConfigError, InvalidJob, InvalidJobId, InvalidQueueName, JobNotFound, MrqError, createClient,
} from '../src/index.js';
import { env, keysOf, ownPrefix, rawJobs, rawRedis, testClient } from './helpers.js';

const validation = JSON.parse(readFileSync(new URL('./fixtures/validation-cases.json', import.meta.url), 'utf8'));
const PATH = 'tests.tasks.general.Echo';
const QUEUE = 'node_bad';
const PREFIX = ownPrefix('bad');
/** @type {import('../src/index.js').Client} */ let client;
/** @type {Awaited<ReturnType<typeof rawJobs>>} */ let raw;
/** Queue names the tests may have stored something on, if the client were broken. */
const touched = new Set([QUEUE]);

before(async () => {
  client = testClient({ redisPrefix: PREFIX });
  raw = await rawJobs();
});

after(async () => {
  await client?.close();
  await raw?.close();
});

/**
 * Queueing must throw `kind` with a message matching `text`.
 * @param {() => Promise<unknown>} call @param {Function} kind @param {RegExp} text
 */
async function refused(call, kind, text) {
  await assert.rejects(call, (error) => {
    assert.ok(error instanceof kind, `${error} is a ${kind.name}`);
    assert.match(/** @type {Error} */ (error).message, text);
    return true;
  });
}

test('params that are not a plain object are refused, saying what they are', async () => {
  const cases = [
    [null, /params #0 must be a plain object \(a JSON object\), got null/],
    [undefined, /got undefined/],
    [[], /got an array/],
    [[1, 2], /got an array/],
    ['text', /got the string "text"/],
    [42, /got the number 42/],
    [true, /got the boolean true/],
    [new Date(), /got an instance of Date/],
    [new Map([['a', 1]]), /got an instance of Map/],
    [new (class Point { constructor() { this.x = 1; } })(), /got an instance of Point/],
    [() => 1, /got a function/],
  ];
  for (const [params, text] of cases) await refused(() => client.queueJob(PATH, params, { queue: QUEUE }), InvalidJob, text);
});

test('params holding what MongoDB cannot store, or Python cannot read back, are refused', async () => {
  const cases = [
    [{ a: undefined }, /^params\.a is undefined; params hold objects, arrays/],
    [{ a: { b: [1, () => 1] } }, /params\.a\.b\[1\] is a function/],
    [{ s: Symbol('x') }, /params\.s is a symbol/],
    [{ m: new Map() }, /params\.m is an instance of Map/],
    [{ set: new Set([1]) }, /params\.set is an instance of Set/],
    [{ r: /x/ }, /params\.r is an instance of RegExp/],
    [{ d: new Date(Number.NaN) }, /params\.d is an invalid Date/],
    [{ big: 2n ** 64n }, /params\.big is 18446744073709551616n, outside the 64-bit integers/],
    [{ s: 'a\ud800b' }, /params\.s is a string with a lone UTF-16 surrogate/],
    [{ 'bad\0key': 1 }, /has a key with a NUL character/],
    // eslint-disable-next-line no-sparse-arrays
    [{ sparse: [1, , 3] }, /params\.sparse has a hole at \[1\]/],
  ];
  for (const [params, text] of cases) await refused(() => client.queueJob(PATH, params, { queue: QUEUE }), InvalidJob, text);
});

test('params nested 180 levels deep, or cyclic, or over the size limit are refused', async () => {
  let deep = { leaf: 1 };
  for (let level = 1; level < 180; level++) deep = { down: deep };
  await refused(() => client.queueJob(PATH, deep, { queue: QUEUE }), InvalidJob,
    /params nest more than 179 levels of objects and arrays/);
  let deepList = [1];
  for (let level = 2; level < 180; level++) deepList = [deepList];
  await refused(() => client.queueJob(PATH, { list: deepList }, { queue: QUEUE }), InvalidJob, /more than 179 levels/);
  const cyclic = { name: 'loop' };
  /** @type {any} */ (cyclic).self = cyclic;
  await refused(() => client.queueJob(PATH, cyclic, { queue: QUEUE }), InvalidJob, /more than 179 levels/);
  await refused(() => client.queueJob(PATH, { text: 'x'.repeat(16 * 1024 * 1024) }, { queue: QUEUE }), InvalidJob,
    /params #0 make a 16\.0 MiB job document; MongoDB documents are limited to 16 MiB/);
  // Empty objects and arrays do not count as levels (as in MongoDB and Python's nesting_depth).
  let hollow = {};
  for (let level = 1; level < 178; level++) hollow = { down: hollow };
  const other = testClient({ redisPrefix: ownPrefix('hollow') }); // not PREFIX: the last test wants it empty
  try {
    const id = await other.queueJob(PATH, { wrap: hollow, list: [[[]]] }, { queue: 'node_hollow' });
    assert.equal((await other.getJob(id))?.status, 'queued');
  } finally {
    await other.close();
  }
});

test('one bad params object among many: nothing of the batch is stored', async () => {
  const paramsList = [{ n: 0 }, { n: 1 }, { n: 2 }, [3], { n: 4 }];
  await refused(() => client.queueJobs(PATH, paramsList, { queue: QUEUE, batchSize: 2 }), InvalidJob,
    /params #3 must be a plain object/);
  await refused(() => client.queueJobs(PATH, [{ n: 0 }, { n: 1 }, { n: 2 }, { n: undefined }], { queue: QUEUE }),
    InvalidJob, /^params #3: params\.n is undefined/);
  await refused(() => client.queueJobs(PATH, { n: 1 }, { queue: QUEUE }), InvalidJob, /paramsList must be an array/);
  await refused(() => client.queueJobs(PATH, [{}], { queue: QUEUE, batchSize: 0 }), InvalidJob, /batchSize must be an integer >= 1/);
  await refused(() => client.queueJobs(PATH, [{}], { queue: QUEUE, batchSize: 1.5 }), InvalidJob, /batchSize/);
});

test('a document MongoDB refuses: InvalidJob naming it, its batch removed, earlier batches reported', async () => {
  assert.deepEqual(await client.queueJobs(PATH, [], { queue: QUEUE }), []);
  // A unique index makes the server refuse a job the client cannot tell is bad (readWrite may create it).
  const field = `params.node_unique_${process.pid}`;
  const index = await raw.jobs.createIndex({ [field]: 1 }, { unique: true, sparse: true });
  const queue = 'node_refused';
  const other = testClient({ redisPrefix: ownPrefix('refused') });
  try {
    const probe = { [`node_unique_${process.pid}`]: 'same' };
    /** @type {string[]} */
    let queuedIds = [];
    await assert.rejects(other.queueJobs(PATH, [{ n: 0 }, { n: 1 }, { n: 2 }, probe, { n: 4 }, probe], { queue, batchSize: 2 }),
      (error) => {
        assert.ok(error instanceof InvalidJob, String(error));
        assert.match(error.message, /^MongoDB refused job #5: .*(duplicate|E11000).* \(4 jobs of earlier batches were queued\)$/i);
        queuedIds = error.queuedIds;
        return true;
      });
    const stored = await raw.jobs.find({ queue }).sort({ _id: 1 }).toArray();
    assert.deepEqual(stored.map((doc) => doc.params.n ?? 'probe'), [0, 1, 2, 'probe'], 'the refused batch left nothing');
    assert.deepEqual(stored.map((doc) => doc._id.toHexString()), queuedIds, 'error.queuedIds: the jobs queued');
    const redis = await rawRedis();
    try {
      assert.deepEqual(await redis.lRange(`{${ownPrefix('refused')}:q:${queue}}:ids`, 0, -1), queuedIds);
    } finally {
      await redis.close();
    }
  } finally {
    await raw.jobs.dropIndex(index);
    await other.close();
  }
});

test('task paths: the verdicts of Python validate_task_path', async () => {
  const verdicts = env.reference.verdicts.taskPaths;
  assert.equal(verdicts.length, validation.taskPaths.length);
  for (const [i, path] of validation.taskPaths.entries()) {
    const call = client.queueJobs(path, [[]]); // a valid path reaches the params check, a bad one stops first
    if (verdicts[i]) await refused(() => call, InvalidJob, /params #0 must be a plain object/);
    else await refused(() => call, InvalidJob, /task path must be a dotted Python path like 'tasks\.io\.Fetch', got /);
  }
  assert.ok(verdicts.includes(true) && verdicts.includes(false));
  for (const path of [undefined, null, 42, ['a', 'b']]) {
    await refused(() => client.queueJob(/** @type {any} */ (path), {}), InvalidJob, /task path must be a dotted/);
  }
});

test('queue names: the verdicts of Python validate_job_queue and queue_kind (raw queues refused)', async () => {
  const verdicts = env.reference.verdicts.queues;
  assert.equal(verdicts.length, validation.queues.length);
  /** @type {Record<string, number>} */
  const counts = {};
  for (const [i, queue] of validation.queues.entries()) {
    if (queue !== 'default') touched.add(queue); // other files queue jobs on `default`
    const call = client.queueJobs(PATH, [[]], { queue }); // a usable queue reaches the params check
    const verdict = verdicts[i];
    counts[verdict] = (counts[verdict] ?? 0) + 1;
    if (verdict === 'ok') {
      await refused(() => call, InvalidJob, /params #0 must be a plain object/);
    } else if (verdict === 'raw') {
      await refused(() => call, InvalidJob, new RegExp(`queue '${queue.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}' is a ` +
        'raw queue .*not jobs'));
    } else {
      await assert.rejects(call, (error) => {
        assert.ok(error instanceof InvalidQueueName, `${JSON.stringify(queue)}: ${error}`);
        assert.ok(error instanceof InvalidJob, 'an InvalidQueueName is an InvalidJob');
        assert.match(/** @type {Error} */ (error).message, /^queue name /);
        return true;
      });
    }
  }
  assert.ok(counts.ok >= 5 && counts.raw >= 5 && counts.invalid >= 10, JSON.stringify(counts));
  await refused(() => client.queueJob(PATH, {}, { queue: /** @type {any} */ (7) }), InvalidQueueName,
    /queue name must be a string, got the number 7/);
  await refused(() => client.queueJob(PATH, {}, { queue: 'x_raw' }), InvalidJob,
    /queue 'x_raw' is a raw queue \(its name ends in _raw\).*queue_raw_jobs/);
  await refused(() => client.queueJob(PATH, {}, { queue: 'a b' }), InvalidQueueName,
    /queue name 'a b' contains ' ': use letters, digits and _ - \. @ \+ =, with '\/' between subqueue parts/);
  await refused(() => client.queueJob(PATH, {}, { queue: 'fast_reverse' }), InvalidQueueName,
    /ends with _reverse: that form only tells a worker to take the queue 'fast' newest first/);
});

test('job ids: a malformed id is an InvalidJobId, an unknown one null / JobNotFound', async () => {
  for (const id of ['nope', '', '0123456789abcdef0123456', '0123456789abcdef012345678', 'zz23456789abcdef01234567',
    ' 0123456789abcdef01234567', 123, null, undefined, {}, 'abcdefghijkl']) {
    await assert.rejects(client.getJob(/** @type {any} */ (id)), InvalidJobId);
    await assert.rejects(client.waitJob(/** @type {any} */ (id), { timeout: 10 }), (error) => {
      assert.ok(error instanceof InvalidJobId);
      assert.match(error.message, /job id must be a 24-character hex string/);
      return true;
    });
  }
  const unknown = new ObjectId().toHexString();
  assert.equal(await client.getJob(unknown), null);
  assert.equal(await client.getJob(unknown.toUpperCase()), null);
  await assert.rejects(client.waitJob(unknown), JobNotFound);
  await assert.rejects(client.waitJob(unknown, { timeout: -1 }), /timeout: expected ms >= 0/);
  await assert.rejects(client.waitJob(unknown, { pollInterval: 0 }), /pollInterval: expected ms > 0/);
});

test('settings: bad URIs and prefixes are refused when the client is created', () => {
  const base = { redis: env.redis, mongodb: env.mongodb, env: {} };
  const cases = [
    [{ redis: 'http://127.0.0.1:6379' }, /redis: expected redis:\/\/, rediss:\/\/ or unix:\/\//],
    [{ redis: 'redis+sentinel://h:26379/svc' }, /redis\+sentinel:\/\/ is not supported/],
    [{ redis: 'redis+cluster://h:6379' }, /redis\+cluster:\/\/ is not supported/],
    [{ mongodb: 'postgres://x' }, /mongodb: expected a mongodb:\/\/ URI/],
    [{ mongodb: 'mongodb://u:secret@h:27017/db?badOption=1&authMechanism=NOPE' }, /invalid MongoDB URI mongodb:\/\/u:\*\*\*@/],
    [{ redisPrefix: 'a:b' }, /redis prefix "a:b": use 1-64 letters/],
    [{ redisPrefix: 'x'.repeat(65) }, /redis prefix/],
    [{ redisTimeout: 0 }, /redisTimeout: expected at least 100 ms/],
    [{ env: { MRQ_MONGODB_TIMEOUT: 'soon' }, mongodb: undefined }, /mongodbTimeout/],
  ];
  for (const [options, text] of cases) {
    assert.throws(() => createClient({ ...base, ...options }), (error) => {
      assert.ok(error instanceof ConfigError, String(error));
      assert.match(/** @type {Error} */ (error).message, text);
      assert.doesNotMatch(/** @type {Error} */ (error).message, /secret/);
      return true;
    });
  }
});

test('settings come from the options, else MRQ_* variables, else mrq defaults', async () => {
  const fromEnv = createClient({ env: { MRQ_REDIS: 'redis://10.1.2.3:7000/2', MRQ_REDIS_PREFIX: 'app',
    MRQ_MONGODB_JOBS: 'mongodb://user:pw@10.1.2.3:27000/jobs?authSource=admin', MRQ_REDIS_TIMEOUT: '2.5' } });
  assert.deepEqual(fromEnv.settings, { redisPrefix: 'app', redisTimeout: 2500, mongodbTimeout: 5000, defaultJobTtl: 180 * 86_400_000,
    databaseName: 'jobs', redis: 'redis://10.1.2.3:7000/2', mongodb: 'mongodb://user:***@10.1.2.3:27000/jobs?authSource=admin' });
  const defaults = createClient({ env: {} });
  assert.deepEqual(defaults.settings, { redisPrefix: 'mrq', redisTimeout: 10000, mongodbTimeout: 5000, defaultJobTtl: 15_552_000_000,
    databaseName: 'mrq', redis: 'redis://127.0.0.1:6379/0', mongodb: 'mongodb://127.0.0.1:27017/mrq' });
  const options = createClient({ env: { MRQ_REDIS_PREFIX: 'app' }, redisPrefix: 'mine', mongodb: 'mongodb://h/' });
  assert.equal(options.settings.redisPrefix, 'mine');
  assert.equal(options.settings.databaseName, 'mrq');
  const ttl = createClient({ env: { MRQ_DEFAULT_JOB_TTL: '3600' } });
  assert.equal(ttl.settings.defaultJobTtl, 3_600_000, 'MRQ_DEFAULT_JOB_TTL: seconds, as mrq reads it');
  const keepNone = createClient({ env: { MRQ_DEFAULT_JOB_TTL: '3600' }, defaultJobTtl: 0 });
  assert.equal(keepNone.settings.defaultJobTtl, 0, 'the option wins');
  assert.throws(() => createClient({ defaultJobTtl: -1 }), /defaultJobTtl: expected at least 0 ms/);
  await Promise.all([fromEnv.close(), defaults.close(), options.close(), ttl.close(), keepNone.close()]);
  await assert.rejects(fromEnv.queueJob(PATH, {}), (error) => error instanceof MrqError && /closed/.test(error.message));
});

test('after all of the above: nothing was stored, in MongoDB or in Redis', async () => {
  const left = await raw.jobs.countDocuments({ queue: { $in: [...touched] } });
  assert.equal(left, 0, `documents left on ${[...touched].slice(0, 5)}...`);
  const redis = await rawRedis();
  try {
    assert.deepEqual(await keysOf(redis, PREFIX), [], 'no Redis key under the prefix of these tests');
  } finally {
    await redis.close();
  }
});
