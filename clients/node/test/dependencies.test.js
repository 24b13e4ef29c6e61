// Jobs that wait for others (`dependsOn`), queued from Node. First against Python: the cases of
// fixtures/waiting-jobs.json were queued by tests/test_node_client.py with Python's queue_jobs on
// dependencies the worker ran (MRQ_TEST_REFERENCE.waiting); here the same cases are queued with
// mrq-client on another prefix, and documents, the dependencies' `dependents`, Redis keys and
// messages are compared. Then workflows run by the Python worker, and the inputs refused.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';

import { BSON, ObjectId } from 'mongodb';

import { InvalidJob } from '../src/index.js';
import { env, keysOf, ownPrefix, rawJobs, rawRedis, recordNotifications, testClient } from './helpers.js';

const { cases } = JSON.parse(readFileSync(new URL('./fixtures/waiting-jobs.json', import.meta.url), 'utf8'));
const reference = env.reference.waiting;
const STEP = 'tests.tasks.workflow.Step';
const WAIT = { timeout: 30_000, pollInterval: 20 };
const DAY = 24 * 3600 * 1000;
/** @type {string[][]} */ let nodeIds;
/** @type {string[][]} */ const messages = [];
/** @type {any} */ let redis;
/** @type {any} */ let subscriber;
/** @type {Awaited<ReturnType<typeof rawJobs>>} */ let raw;
/** @type {import('../src/index.js').Client} */ let client;

before(async () => {
  redis = await rawRedis();
  subscriber = await recordNotifications(redis, reference.nodePrefix, messages);
  raw = await rawJobs();
  // The steps the workflow tests' task records, read by job (strict mode refuses a collection scan).
  await raw.db.collection('steps').createIndex({ job: 1 });
  client = testClient();
  const referenceClient = testClient({ redisPrefix: reference.nodePrefix });
  try {
    nodeIds = [];
    for (const { path, queue, paramsList, dependsOn, onDependencyFailure } of cases) {
      const ids = dependsOn.map((/** @type {string} */ name) => reference.dependencies[name]);
      nodeIds.push(await referenceClient.queueJobs(path, paramsList, { queue, dependsOn: ids, onDependencyFailure }));
    }
  } finally {
    await referenceClient.close();
  }
  for (let i = 0; i < 100 && messages.length < reference.messages.length; i++) await sleep(50);
});

after(async () => {
  await client?.close();
  await subscriber?.close();
  await redis?.close();
  await raw?.close();
});

/** @param {string} id */
const oid = (id) => ObjectId.createFromHexString(id);

/**
 * A stored document as its BSON size and canonical Extended JSON (every BSON type spelled out, in
 * stored field order), its id and every date checked then replaced by placeholders.
 * @param {string} id
 */
async function canonical(id) {
  const bytes = await raw.jobs.findOne({ _id: oid(id) }, { raw: true });
  assert.ok(bytes, `no document ${id}`);
  const doc = BSON.deserialize(/** @type {any} */ (bytes), { promoteValues: false, promoteLongs: false });
  assert.equal(doc._id.toHexString(), id);
  doc._id = '<id>';
  const expiry = doc.dateexpires && doc.dateexpires.getTime() - doc.datefinished.getTime();
  const dated = (/** @type {any} */ value) => {
    if (value instanceof Date) {
      assert.ok(Math.abs(value.getTime() - Date.now()) < 10 * 60_000 || value === doc.dateexpires, `${value} is now`);
      return '<date>';
    }
    if (Array.isArray(value)) return value.map(dated);
    if (value && typeof value === 'object' && !value._bsontype) {
      return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, dated(item)]));
    }
    return value;
  };
  return { size: /** @type {any} */ (bytes).length, expiry, text: BSON.EJSON.stringify(dated(doc), { relaxed: false }) };
}

test('a job that waits: the document Python stores, field for field, for each way it can be settled', async () => {
  const statuses = [];
  for (const [c, ids] of nodeIds.entries()) {
    assert.equal(ids.length, reference.ids[c].length, `case ${c}: as many ids as Python`);
    for (const [j, id] of ids.entries()) {
      const node = await canonical(id);
      const python = await canonical(reference.ids[c][j]);
      assert.deepEqual(JSON.parse(node.text), JSON.parse(python.text), `${cases[c].name} #${j}: fields and BSON types`);
      assert.equal(node.text, python.text, `${cases[c].name} #${j}: the same fields in the same order`);
      assert.equal(node.size, python.size, `${cases[c].name} #${j}: the same BSON size`);
      assert.equal(node.expiry, python.expiry, `${cases[c].name} #${j}: kept as long`);
      statuses.push(/** @type {any} */ (await client.getJob(id)).status);
    }
  }
  assert.deepEqual(statuses, ['waiting', 'waiting', 'waiting', 'waiting', 'queued', 'queued', 'cancel', 'queued']);
  const cancelled = await client.getJob(nodeIds[4][0]);
  assert.equal(/** @type {Date} */ (cancelled?.dateexpires).getTime() - /** @type {Date} */ (cancelled?.datefinished).getTime(),
    180 * DAY, 'a job cancelled by its dependency is kept default_job_ttl');
  assert.equal(cancelled?.traceback, `DependencyFailed: dependency ${reference.dependencies.bad} ended failed, so this ` +
    "job was cancelled without running (queue it with on_dependency_failure='run' to run it whatever its " +
    'dependencies end with)');
});

test("the dependencies list the jobs that wait for them in `dependents`: Python's, then Node's", async () => {
  for (const [name, id] of Object.entries(reference.dependencies)) {
    const waiting = (/** @type {string[][]} */ ids) => cases.flatMap((/** @type {any} */ c, /** @type {number} */ i) =>
      (c.dependsOn.includes(name) ? ids[i] : []));
    const doc = await client.getJob(/** @type {string} */ (id));
    assert.deepEqual(doc?.dependents, [...waiting(reference.ids), ...waiting(nodeIds)], name);
  }
});

/** The keys under a prefix with the prefix (and a stats key's minute) replaced. @param {string} prefix */
async function keyShapes(prefix) {
  const shapes = new Map();
  for (const key of await keysOf(redis, prefix)) {
    shapes.set(key.split(prefix).join('<p>').replace(/^<p>:stats:\d+$/, '<p>:stats:<minute>'), key);
  }
  return shapes;
}

test('Redis: nothing for a job that waits; one settled at once is pushed and announced as Python does it', async () => {
  const py = await keyShapes(reference.prefix);
  const node = await keyShapes(reference.nodePrefix);
  assert.deepEqual([...node.keys()].sort(), [...py.keys()].sort(), 'the same keys');
  assert.deepEqual([...py.keys()].sort(), ['<p>:stats:<minute>', '{<p>:q:node_wait_settled}:ids', '{<p>:queues}:names']);
  const settled = [...nodeIds[3], ...nodeIds[5]];
  assert.deepEqual(await redis.lRange(`{${reference.nodePrefix}:q:node_wait_settled}:ids`, 0, -1), settled);
  assert.deepEqual(await redis.hGetAll(node.get('<p>:stats:<minute>')), await redis.hGetAll(py.get('<p>:stats:<minute>')));
  assert.deepEqual(await redis.zRangeWithScores(node.get('{<p>:queues}:names'), 0, -1),
    await redis.zRangeWithScores(py.get('{<p>:queues}:names'), 0, -1));
  assert.equal(reference.messages.length, 3);
  assert.deepEqual(messages, reference.messages);
});

/** The `steps` a tests.tasks.workflow.Step job recorded: start and end (unix seconds). @param {string} id */
async function step(id) {
  return raw.db.collection('steps').findOne({ job: oid(id) });
}

test('a diamond queued from Node (A -> B, C -> D) runs in order; D gets the results of B and C', async () => {
  const a = await client.queueJob(STEP, { name: 'A', seconds: 0.5 });
  const b = await client.queueJob(STEP, { name: 'B', seconds: 0.2 }, { dependsOn: [a] });
  const c = await client.queueJob(STEP, { name: 'C', seconds: 0.3 }, { dependsOn: [ObjectId.createFromHexString(a)] });
  const d = await client.queueJob(STEP, { name: 'D' }, { dependsOn: [b, c] });
  assert.deepEqual([(await client.getJob(b))?.status, (await client.getJob(d))?.status], ['waiting', 'waiting']);
  const done = await client.waitJob(d, WAIT);
  assert.equal(done.status, 'success', String(done.traceback));
  const [ranA, ranB, ranC, ranD] = await Promise.all([a, b, c, d].map(step));
  assert.ok(ranB?.start >= ranA?.end && ranC?.start >= ranA?.end, 'B and C after A');
  assert.ok(ranD?.start >= Math.max(ranB?.end, ranC?.end), 'D after B and C');
  assert.deepEqual(done.result, { name: 'D', got: [{ name: 'B', got: [{ name: 'A', got: [] }] },
    { name: 'C', got: [{ name: 'A', got: [] }] }] });
  assert.deepEqual([...(/** @type {string[]} */ (done.dependencies_ended))].sort(), [b, c].sort());
  assert.deepEqual((await client.getJob(a))?.dependents, [b, c]);
  const last = Math.max(...await Promise.all([b, c].map(async (id) => /** @type {Date} */ ((await client.getJob(id))?.datefinished).getTime())));
  assert.ok(/** @type {Date} */ (done.datequeued).getTime() - last < 1000, 'released by the end of its last dependency');
});

test('a failed dependency cancels the job queued from Node that waits for it, with the reason, and what waits for that', async () => {
  const a = await client.queueJob(STEP, { name: 'A', seconds: 0.5, fail: true });
  const b = await client.queueJob(STEP, { name: 'B' }, { dependsOn: [a] });
  const c = await client.queueJob(STEP, { name: 'C' }, { dependsOn: [b] });
  const anyway = await client.queueJob(STEP, { name: 'anyway' }, { dependsOn: [a], onDependencyFailure: 'run' });
  assert.equal((await client.getJob(anyway))?.status, 'waiting');
  assert.equal((await client.waitJob(a, WAIT)).status, 'failed');
  const jobB = await client.waitJob(b, WAIT);
  assert.equal(jobB.status, 'cancel');
  assert.equal(jobB.exceptiontype, 'DependencyFailed');
  assert.match(String(jobB.traceback), new RegExp(`^DependencyFailed: dependency ${a} ended failed, so this job was cancelled`));
  assert.equal(/** @type {any[]} */ (jobB.traceback_history).at(-1).dependency, a);
  const jobC = await client.waitJob(c, WAIT);
  assert.equal(jobC.status, 'cancel');
  assert.match(String(jobC.traceback), new RegExp(`dependency ${b} ended cancel`));
  const ran = await client.waitJob(anyway, WAIT);
  assert.equal(ran.status, 'success');
  assert.deepEqual(ran.result, { name: 'anyway', got: [null] });
  assert.equal(await raw.db.collection('steps').countDocuments({ job: { $in: [oid(b), oid(c)] } }), 0, 'B and C never ran');
});

test('a dependency that ended before the enqueue settles the job before queueJob returns', async () => {
  const ok = await client.queueJob(STEP, { name: 'ok' });
  const bad = await client.queueJob(STEP, { name: 'bad', fail: true });
  await Promise.all([client.waitJob(ok, WAIT), client.waitJob(bad, WAIT)]);
  const prefix = ownPrefix('ended'); // no worker: what the producer pushed stays there
  const idle = testClient({ redisPrefix: prefix });
  try {
    const afterOk = await idle.queueJob(STEP, { name: 'after_ok' }, { queue: 'node_deps_idle', dependsOn: [ok] });
    assert.equal((await idle.getJob(afterOk))?.status, 'queued');
    const afterBad = await idle.queueJob(STEP, { name: 'after_bad' }, { queue: 'node_deps_idle', dependsOn: [ok, bad] });
    const cancelled = await idle.getJob(afterBad);
    assert.equal(cancelled?.status, 'cancel');
    assert.match(String(cancelled?.traceback), new RegExp(`dependency ${bad} ended failed`));
    const [anyway] = await idle.queueJobs(STEP, [{ name: 'anyway' }], { queue: 'node_deps_idle', dependsOn: [bad],
      onDependencyFailure: 'run' });
    assert.equal((await idle.getJob(anyway))?.status, 'queued');
    assert.deepEqual(await redis.lRange(`{${prefix}:q:node_deps_idle}:ids`, 0, -1), [afterOk, anyway]);
  } finally {
    await idle.close();
  }
});

test('bad dependencies are refused with a clear error, and nothing is stored', async () => {
  const prefix = ownPrefix('deps-bad');
  const queue = 'node_deps_bad';
  const bad = testClient({ redisPrefix: prefix });
  const a = await bad.queueJob(STEP, { name: 'A' }, { queue });
  const keys = await keysOf(redis, prefix);
  const missing = new ObjectId().toHexString();
  const cases = [
    [{ dependsOn: [a, missing] }, new RegExp(`^dependsOn: no job ${missing} in the store: it never existed, or ended and expired$`)],
    [{ dependsOn: [a, ...Array.from({ length: 9_999 }, () => new ObjectId())] }, /no job [0-9a-f]{24} \(and 9998 more\) in the store/],
    [{ dependsOn: Array.from({ length: 10_001 }, () => new ObjectId()) }, /^dependsOn lists 10001 jobs; a job may wait for at most 10000/],
    [{ dependsOn: ['not an id'] }, /^dependsOn must list job ids \(24-character hex strings or ObjectIds\), got the string "not an id"$/],
    [{ dependsOn: [12] }, /must list job ids .*got the number 12/],
    [{ dependsOn: [a, 'zz' + a.slice(2)] }, /must list job ids/],
    [{ dependsOn: [a.slice(1)] }, /must list job ids/],
    [{ dependsOn: [null] }, /must list job ids .*got null/],
    [{ dependsOn: [{ id: a }] }, /must list job ids .*got an instance of Object/],
    [{ dependsOn: a }, /^dependsOn must be an array of job ids, got the string/],
    [{ dependsOn: [a], onDependencyFailure: 'ignore' }, /^onDependencyFailure must be one of cancel, run, got the string "ignore"$/],
    [{ onDependencyFailure: 'ignore' }, /onDependencyFailure must be one of cancel, run/],
    [{ dependsOn: [a], queue: 'fast_raw' }, /^dependsOn cannot be used on raw queue 'fast_raw': a raw queue holds parameters/],
    [{ dependsOn: [a], queue: 'fast_set/sub' }, /^dependsOn cannot be used on raw queue 'fast_set\/sub'/],
  ];
  try {
    for (const [options, text] of cases) {
      for (const call of [() => bad.queueJob(STEP, {}, { queue, ...options }),
        () => bad.queueJobs(STEP, [{}, {}], { queue, batchSize: 1, ...options })]) {
        await assert.rejects(call, (error) => {
          assert.ok(error instanceof InvalidJob, String(error));
          assert.match(/** @type {Error} */ (error).message, /** @type {RegExp} */ (text));
          return true;
        });
      }
    }
    assert.deepEqual(await raw.jobs.find({ queue }).map((doc) => doc._id.toHexString()).toArray(), [a], 'only A is stored');
    assert.equal((await bad.getJob(a))?.dependents, undefined, 'nothing registered on A');
    assert.deepEqual(await keysOf(redis, prefix), keys, 'no Redis key written');
    assert.deepEqual(await redis.lRange(`{${prefix}:q:${queue}}:ids`, 0, -1), [a]);
    // An empty list is no dependency: a plain queued job.
    const plain = await bad.queueJob(STEP, {}, { queue, dependsOn: [] });
    assert.equal((await bad.getJob(plain))?.status, 'queued');
  } finally {
    await bad.close();
  }
});
