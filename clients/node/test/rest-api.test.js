// examples/node-rest-api, started as its README says (node server.js, the stores from MRQ_*
// variables) on a free 127.0.0.1 port: a POST queues a job, the Python worker runs it, a GET
// serves its result; bad requests get a 4xx, a store down a 503 with nothing left queued.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';

import { ObjectId } from 'mongodb';

import { freePort, rawJobs } from './helpers.js';

const SERVER = fileURLToPath(new URL('../../../examples/node-rest-api/server.js', import.meta.url));
const LINKED = fileURLToPath(new URL('../../../examples/node-rest-api/node_modules/mrq-client', import.meta.url));
/** @type {Array<{stop: () => Promise<void>}>} */
const started = [];
/** @type {Awaited<ReturnType<typeof rawJobs>>} */ let raw;

/** Start the example with these variables (on top of the test's MRQ_*); resolves to its base URL.
 * @param {Record<string, string>} [vars] */
async function serve(vars = {}) {
  assert.ok(existsSync(LINKED), 'examples/node-rest-api/node_modules is missing: run scripts/bootstrap (npm ci)');
  const port = await freePort();
  const proc = spawn(process.execPath, [SERVER], {
    env: { ...process.env, PORT: String(port), ...vars },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  proc.stdout.on('data', (chunk) => { output += chunk; });
  proc.stderr.on('data', (chunk) => { output += chunk; });
  const exited = once(proc, 'exit');
  started.push({ stop: async () => { if (proc.exitCode === null && proc.signalCode === null) { proc.kill('SIGTERM'); await exited; } } });
  const deadline = Date.now() + 10_000;
  while (!output.includes(`listening on http://127.0.0.1:${port}`)) {
    assert.ok(proc.exitCode === null && Date.now() < deadline, `the example did not start:\n${output}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return `http://127.0.0.1:${port}`;
}

/** @param {string} url @param {RequestInit} [init] */
async function call(url, init) {
  const response = await fetch(url, init);
  return { status: response.status, body: await response.json() };
}

/** @param {string} base @param {unknown} body */
function post(base, body, type = 'application/json') {
  return call(`${base}/jobs`, { method: 'POST', headers: { 'content-type': type },
    body: typeof body === 'string' ? body : JSON.stringify(body) });
}

before(async () => {
  raw = await rawJobs();
});
after(async () => {
  for (const server of started) await server.stop();
  await raw?.close();
});

test('POST /jobs queues a job, a Python worker runs it, GET /jobs/:id?wait serves the result', async () => {
  const base = await serve();
  const created = await post(base, { text: 'one two three four five six seven', max_words: 3 });
  assert.equal(created.status, 202, JSON.stringify(created.body));
  const { id } = created.body;
  assert.match(id, /^[0-9a-f]{24}$/);
  assert.equal(created.body.status, `/jobs/${id}`);
  const doc = await raw.jobs.findOne({ _id: ObjectId.createFromHexString(id) });
  assert.equal(doc?.path, 'examples.tasks.summarize');
  assert.deepEqual(doc?.params, { text: 'one two three four five six seven', max_words: 3 });
  const done = await call(`${base}/jobs/${id}?wait=20`);
  assert.equal(done.status, 200);
  assert.deepEqual(done.body, { id, status: 'success', result: { words: 7, summary: 'one two three' } });
  const again = await call(`${base}/jobs/${id}`);
  assert.deepEqual(again.body, done.body);
});

test('bad requests: 400 for bad JSON or body, 404 for unknown or malformed ids, 405, 415', async () => {
  const base = await serve();
  const before = await raw.jobs.countDocuments({ path: 'examples.tasks.summarize', status: 'queued' });
  const bad = [
    ['{"text": ', 400, /not valid JSON/],
    ['[1, 2]', 400, /must be a JSON object/],
    ['"text"', 400, /must be a JSON object/],
    ['null', 400, /must be a JSON object/],
    [{ max_words: 3 }, 400, /"text" must be a string/],
    [{ text: 5 }, 400, /"text" must be a string/],
    [{ text: 'a', max_words: 0 }, 400, /"max_words" must be an integer >= 1/],
    [{ text: 'a', other: 1 }, 400, /unknown fields: other/],
  ];
  for (const [body, status, text] of bad) {
    const answer = await post(base, body);
    assert.equal(answer.status, status, `${JSON.stringify(body)}: ${JSON.stringify(answer.body)}`);
    assert.match(answer.body.error, text);
  }
  assert.equal((await post(base, 'text=a', 'application/x-www-form-urlencoded')).status, 415);
  assert.equal((await post(base, 'x'.repeat(1024 * 1024 + 1))).status, 413);
  assert.equal((await call(`${base}/jobs`)).status, 405);
  assert.equal((await call(`${base}/nowhere`)).status, 404);
  for (const id of ['not-an-id', new ObjectId().toHexString(), '0123456789abcdef0123456z']) {
    const answer = await call(`${base}/jobs/${id}?wait=1`);
    assert.equal(answer.status, 404, id);
    assert.match(answer.body.error, /no job/);
  }
  assert.equal((await call(`${base}/jobs/${new ObjectId().toHexString()}?wait=x`)).status, 400);
  assert.equal(await raw.jobs.countDocuments({ path: 'examples.tasks.summarize', status: 'queued' }), before);
});

test('a job of another task is not served (404): the API serves its own jobs only', async () => {
  const base = await serve();
  const other = new ObjectId();
  await raw.jobs.insertOne({ _id: other, path: 'tests.tasks.general.Add', params: {}, queue: 'elsewhere',
    status: 'success', result: 'secret', datequeued: new Date(), dateupdated: new Date(), retry_count: 0 });
  const answer = await call(`${base}/jobs/${other.toHexString()}`);
  assert.equal(answer.status, 404);
  assert.equal(JSON.stringify(answer.body).includes('secret'), false);
});

test('503 when Redis or MongoDB is down, and nothing is left queued', async () => {
  const deadPort = await freePort();
  const noRedis = await serve({ MRQ_REDIS: `redis://127.0.0.1:${deadPort}/0`, MRQ_REDIS_TIMEOUT: '0.5',
    QUEUE: 'node_rest_outage' });
  const answer = await post(noRedis, { text: 'while redis is down' });
  assert.equal(answer.status, 503, JSON.stringify(answer.body));
  assert.match(answer.body.error, /cannot reach Redis/);
  assert.equal(await raw.jobs.countDocuments({ queue: 'node_rest_outage' }), 0);
  const noMongo = await serve({ MRQ_MONGODB_JOBS: `mongodb://127.0.0.1:${deadPort}/x`, MRQ_MONGODB_TIMEOUT: '0.5' });
  const refused = await post(noMongo, { text: 'while mongodb is down' });
  assert.equal(refused.status, 503, JSON.stringify(refused.body));
  assert.match(refused.body.error, /cannot reach MongoDB/);
  const read = await call(`${noMongo}/jobs/${new ObjectId().toHexString()}`);
  assert.equal(read.status, 503);
});
