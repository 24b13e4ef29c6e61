// mrq-client writes what Python's queue_jobs writes. tests/test_node_client.py queued the cases of
// fixtures/reference-jobs.json with Python on one Redis prefix (MRQ_TEST_REFERENCE: the prefix, the
// ids, the wake-up messages seen); here the same cases are queued with mrq-client on another prefix,
// then documents, keys and messages are compared. No worker listens on these queues.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';

import { BSON } from 'mongodb';

import { env, keysOf, rawJobs, rawRedis, recordNotifications, testClient } from './helpers.js';

const { cases } = JSON.parse(readFileSync(new URL('./fixtures/reference-jobs.json', import.meta.url), 'utf8'));
const reference = env.reference;
/** @type {string[][]} */
let nodeIds;
/** @type {string[][]} */
const messages = [];
/** @type {any} */ let redis;
/** @type {any} */ let subscriber;
/** @type {Awaited<ReturnType<typeof rawJobs>>} */ let raw;
let startedAt = 0;

before(async () => {
  redis = await rawRedis();
  subscriber = await recordNotifications(redis, reference.nodePrefix, messages);
  raw = await rawJobs();
  const client = testClient({ redisPrefix: reference.nodePrefix });
  startedAt = Date.now();
  try {
    nodeIds = [];
    for (const { path, queue, paramsList } of cases) nodeIds.push(await client.queueJobs(path, paramsList, { queue }));
  } finally {
    await client.close();
  }
  for (let i = 0; i < 100 && messages.length < cases.length; i++) await sleep(50);
});

after(async () => {
  await subscriber?.close();
  await redis?.close();
  await raw?.close();
});

/**
 * A stored document as canonical Extended JSON (every BSON type spelled out: $numberInt,
 * $numberLong, $numberDouble, $date...), in stored field order, its id and dates checked then
 * replaced by placeholders. Read raw: the bytes MongoDB returns, not the driver's promotion.
 * @param {string} id
 */
async function canonical(id) {
  const bytes = await raw.jobs.findOne({ _id: BSON.ObjectId.createFromHexString(id) }, { raw: true });
  assert.ok(bytes, `no document ${id}`);
  const doc = BSON.deserialize(/** @type {any} */ (bytes), { promoteValues: false, promoteLongs: false });
  assert.ok(doc._id instanceof BSON.ObjectId && doc._id.toHexString() === id, `_id of ${id} is ${doc._id}`);
  assert.ok(doc.datequeued instanceof Date, 'datequeued is a BSON date');
  assert.equal(doc.dateupdated?.getTime(), doc.datequeued.getTime(), 'dateupdated == datequeued');
  assert.ok(Math.abs(doc.datequeued.getTime() - Date.now()) < 10 * 60_000, `datequeued ${doc.datequeued} is now`);
  doc._id = '<id>';
  doc.datequeued = '<date>';
  doc.dateupdated = '<date>';
  return BSON.EJSON.stringify(doc, { relaxed: false });
}

test('each document equals the one Python queue_jobs stored for the same path, queue and params', async () => {
  assert.equal(nodeIds.length, reference.ids.length);
  let compared = 0;
  for (const [c, ids] of nodeIds.entries()) {
    assert.equal(ids.length, reference.ids[c].length, `case ${c}: as many ids as Python`);
    for (const [j, id] of ids.entries()) {
      const node = await canonical(id);
      const python = await canonical(reference.ids[c][j]);
      assert.deepEqual(JSON.parse(node), JSON.parse(python), `case ${c} job ${j}: fields and BSON types`);
      assert.equal(node, python, `case ${c} job ${j}: the same fields in the same order`);
      compared += 1;
    }
  }
  assert.equal(compared, cases.reduce((/** @type {number} */ n, /** @type {any} */ c) => n + c.paramsList.length, 0));
});

test('ids are 24-hex ObjectId strings, in params order, pushed in that order', async () => {
  for (const [c, ids] of nodeIds.entries()) {
    for (const id of ids) assert.match(id, /^[0-9a-f]{24}$/);
    for (const [j, id] of ids.entries()) {
      const doc = await raw.jobs.findOne({ _id: BSON.ObjectId.createFromHexString(id) });
      assert.deepEqual(doc?.params, cases[c].paramsList[j], `case ${c}: job ${j} has params #${j}`);
    }
  }
  const byQueue = new Map();
  for (const [c, ids] of nodeIds.entries()) byQueue.set(cases[c].queue, [...(byQueue.get(cases[c].queue) ?? []), ...ids]);
  for (const [queue, ids] of byQueue) {
    assert.deepEqual(await redis.lRange(`{${reference.nodePrefix}:q:${queue}}:ids`, 0, -1), ids, queue);
  }
});

/** The keys under a prefix with the prefix (and a stats key's minute) replaced. @param {string} prefix */
async function keyShapes(prefix) {
  const shapes = new Map();
  for (const key of await keysOf(redis, prefix)) {
    const shape = key.split(prefix).join('<p>').replace(/^<p>:stats:\d+$/, '<p>:stats:<minute>');
    shapes.set(shape, [...(shapes.get(shape) ?? []), key]);
  }
  return shapes;
}

test('the Redis keys written are the ones Python writes: lists, queue registry, stats', async () => {
  const py = await keyShapes(reference.prefix);
  const node = await keyShapes(reference.nodePrefix);
  assert.deepEqual([...node.keys()].sort(), [...py.keys()].sort(), 'the same keys');
  assert.ok(py.size >= 8, `the reference wrote ${[...py.keys()]}`);
  for (const [shape, [pyKey]] of py) {
    const nodeKey = node.get(shape)[0];
    assert.equal(await redis.type(nodeKey), await redis.type(pyKey), `type of ${shape}`);
    if (shape.endsWith(':ids')) {
      assert.equal(await redis.lLen(nodeKey), await redis.lLen(pyKey), `length of ${shape}`);
    }
  }
  const registry = async (/** @type {string} */ p) => ({
    names: await redis.zRangeWithScores(`{${p}:queues}:names`, 0, -1),
    seen: (await redis.zRangeWithScores(`{${p}:queues}:seen`, 0, -1)),
  });
  const pyRegistry = await registry(reference.prefix);
  const nodeRegistry = await registry(reference.nodePrefix);
  assert.deepEqual(nodeRegistry.names, pyRegistry.names, 'registry names (all scored 0)');
  assert.deepEqual(nodeRegistry.seen.map((/** @type {any} */ e) => e.value), pyRegistry.seen.map((/** @type {any} */ e) => e.value),
    'subqueues noted as seen');
  for (const { value, score } of nodeRegistry.seen) {
    assert.ok(score >= startedAt / 1000 - 1 && score <= Date.now() / 1000 + 1, `seen score of ${value} is now: ${score}`);
  }
  for (const [shape] of py) {
    if (shape.startsWith('{<p>:queues}:sub:')) {
      const root = shape.slice('{<p>:queues}:sub:'.length);
      assert.deepEqual((await redis.sMembers(`{${reference.nodePrefix}:queues}:sub:${root}`)).sort(),
        (await redis.sMembers(`{${reference.prefix}:queues}:sub:${root}`)).sort(), `subqueues of ${root}`);
    }
  }
  const stats = async (/** @type {string[]} */ keys) => {
    /** @type {Record<string, number>} */
    const total = {};
    for (const key of keys) {
      const ttl = await redis.ttl(key);
      assert.ok(ttl > 0 && ttl <= 2 * 3600 + 120, `${key} expires (ttl ${ttl})`);
      for (const [field, count] of Object.entries(await redis.hGetAll(key))) total[field] = (total[field] ?? 0) + Number(count);
    }
    return total;
  };
  const pyStats = await stats(py.get('<p>:stats:<minute>'));
  assert.deepEqual(await stats(node.get('<p>:stats:<minute>')), pyStats, 'the stats counters');
  assert.equal(pyStats['in:node_ref'], 2);
});

test('the wake-up messages are the ones Python publishes', () => {
  assert.equal(reference.messages.length, cases.length);
  assert.deepEqual(messages, reference.messages);
  assert.deepEqual(messages[2], ['notify:node_ref/sub.a', '3']);
});
