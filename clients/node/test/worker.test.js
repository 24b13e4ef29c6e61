// Jobs queued from Node, run by the Python worker tests/test_node_client.py started (queues
// `default` and the subqueues of `node_sub/`), read back from Node.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { ObjectId } from 'mongodb';

import { JobNotFound, JobWaitTimeout } from '../src/index.js';
import { env, rawJobs, rawRedis, testClient } from './helpers.js';

const WAIT = { timeout: 30_000, pollInterval: 20 };
/** @type {import('../src/index.js').Client} */ let client;
/** @type {Awaited<ReturnType<typeof rawJobs>>} */ let raw;

before(async () => {
  client = testClient();
  raw = await rawJobs();
});
after(async () => {
  await client?.close();
  await raw?.close();
});

test('a job queued from Node is run by a Python worker; waitJob reads its result', async () => {
  const before = Date.now();
  const id = await client.queueJob('tests.tasks.general.Add', { a: 40, b: 2 });
  assert.match(id, /^[0-9a-f]{24}$/);
  const job = await client.waitJob(id, WAIT);
  assert.equal(job.status, 'success', JSON.stringify(job));
  assert.equal(job.result, 42);
  assert.equal(job.id, id);
  assert.equal(job.path, 'tests.tasks.general.Add');
  assert.equal(job.queue, 'default');
  assert.deepEqual(job.params, { a: 40, b: 2 });
  assert.equal(job.retry_count, 0);
  for (const field of ['datequeued', 'datestarted', 'datefinished', 'dateupdated', 'dateexpires']) {
    assert.ok(job[field] instanceof Date, `${field} is a Date: ${job[field]}`);
  }
  assert.ok(/** @type {Date} */ (job.datequeued).getTime() >= before - 1000);
  assert.ok(/** @type {Date} */ (job.datefinished).getTime() >= /** @type {Date} */ (job.datestarted).getTime());
  assert.match(String(job.worker), /^[0-9a-f]{24}$/, 'the worker that ran it (its ObjectId, as hex)');
  assert.deepEqual(await client.getJob(id), job);
});

test('a failing job: waitJob resolves with its status, exception type and traceback', async () => {
  const id = await client.queueJob('tests.tasks.general.Fail', { message: 'broken on purpose' });
  const job = await client.waitJob(id, WAIT);
  assert.equal(job.status, 'failed');
  assert.equal(job.exceptiontype, 'ValueError');
  assert.match(String(job.traceback), /ValueError: broken on purpose/);
  assert.equal(job.result, undefined);
});

test('queueJobs of 500: ids in params order, all run by the worker', async () => {
  const paramsList = Array.from({ length: 500 }, (_, i) => ({ a: i, b: 1_000_000 }));
  const ids = await client.queueJobs('tests.tasks.general.Add', paramsList, { batchSize: 200 });
  assert.equal(ids.length, 500);
  assert.equal(new Set(ids).size, 500);
  const objectIds = ids.map((id) => ObjectId.createFromHexString(id));
  const deadline = Date.now() + 60_000;
  for (;;) {
    const done = await raw.jobs.countDocuments({ _id: { $in: objectIds }, status: 'success' });
    if (done === 500) break;
    assert.ok(Date.now() < deadline, `${done} of 500 jobs done after 60 s`);
    await sleep(100);
  }
  const results = new Map();
  for await (const doc of raw.jobs.find({ _id: { $in: objectIds } }, { projection: { result: 1, params: 1 } })) {
    results.set(doc._id.toHexString(), doc);
  }
  ids.forEach((id, i) => {
    assert.equal(results.get(id).params.a, i, `job ${i}: ids come back in params order`);
    assert.equal(results.get(id).result, i + 1_000_000);
  });
  const last = await client.getJob(ids[499]);
  assert.equal(last?.status, 'success');
});

test('a job on a subqueue reaches the worker listening on its root (the queue registry)', async () => {
  const queue = `node_sub/${Date.now()}`;
  const id = await client.queueJob('tests.tasks.general.Echo', { hello: 'subqueue' }, { queue });
  const job = await client.waitJob(id, WAIT);
  assert.equal(job.status, 'success');
  assert.deepEqual(job.result, { hello: 'subqueue' });
  const redis = await rawRedis();
  try {
    assert.ok(await redis.sIsMember(`{${env.prefix}:queues}:sub:node_sub`, queue));
    assert.equal(await redis.zScore(`{${env.prefix}:queues}:names`, queue), 0);
  } finally {
    await redis.close();
  }
});

test('params 179 levels deep are queued and run (180 are refused: validation.test.js)', async () => {
  let params = { leaf: 'bottom' };
  for (let level = 1; level < 179; level++) params = { down: params };
  const id = await client.queueJob('tests.tasks.general.Echo', params);
  const job = await client.waitJob(id, WAIT);
  assert.equal(job.status, 'success', String(job.traceback));
  assert.deepEqual(job.result, params);
});

test('Python values come back to Node as their JSON-ish equivalents', async () => {
  const when = new Date('2024-05-06T07:08:09.123Z');
  const params = { int: 7, big: 2 ** 40, float: 2.5, text: 'é☃😀', when, list: [1, 'two', null], flag: true,
    bytes: Buffer.from([0, 1, 255]), huge: 2n ** 62n, oid: new ObjectId() };
  const id = await client.queueJob('tests.tasks.general.Echo', params);
  const job = await client.waitJob(id, WAIT);
  assert.equal(job.status, 'success');
  assert.deepEqual(job.result, { ...params, oid: params.oid.toHexString() }); // ObjectIds as hex strings
  assert.equal(typeof /** @type {any} */ (job.result).big, 'number');
  assert.equal(typeof /** @type {any} */ (job.result).huge, 'bigint'); // past 2^53: exact
});

test('waitJob: a JobWaitTimeout while the job runs, then its result', async () => {
  const id = await client.queueJob('tests.tasks.general.Sleep', { seconds: 1, result: 'awake' });
  const started = Date.now();
  await assert.rejects(client.waitJob(id, { timeout: 200 }), (error) => {
    assert.ok(error instanceof JobWaitTimeout);
    assert.match(error.message, new RegExp(`job ${id} still (queued|started) after 200 ms`));
    assert.ok(['queued', 'started'].includes(error.status));
    return true;
  });
  assert.ok(Date.now() - started < 2000, 'the timeout is kept');
  const job = await client.waitJob(id, WAIT);
  assert.equal(job.result, 'awake');
});

test('an unknown job id: getJob is null, waitJob rejects with JobNotFound', async () => {
  const id = new ObjectId().toHexString();
  assert.equal(await client.getJob(id), null);
  await assert.rejects(client.waitJob(id, { timeout: 1000 }), JobNotFound);
  await assert.rejects(client.waitJob(id, { timeout: 1000 }), new RegExp(`no job ${id}`));
});
