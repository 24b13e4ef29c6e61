// A REST API that queues an mrq job per request from Node.js (mrq-client), served with plain
// node:http. A Python worker runs the jobs (examples/tasks.py `summarize`):
//
//   (cd examples/node-rest-api && npm ci)
//   node examples/node-rest-api/server.js            # listens on 127.0.0.1:3000 (PORT=0: any free port)
//   mrq-worker default                               # from the repository root: runs the jobs
//
//   curl -X POST 127.0.0.1:3000/jobs -H 'content-type: application/json' -d '{"text": "a b c", "max_words": 2}'
//   curl '127.0.0.1:3000/jobs/<id>?wait=5'
//
// The stores come from MRQ_REDIS, MRQ_MONGODB_JOBS and MRQ_REDIS_PREFIX, as for mrq's commands;
// QUEUE names the queue (default "default").

import http from 'node:http';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  InvalidJob, InvalidJobId, JobNotFound, JobWaitTimeout, StoreUnavailable, createClient,
} from 'mrq-client';

const TASK = 'examples.tasks.summarize';
const MAX_BODY = 1024 * 1024;
const MAX_WAIT = 30; // seconds

/** @param {http.ServerResponse} res @param {number} status @param {unknown} body */
function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

class HttpError extends Error {
  /** @param {number} status @param {string} message */
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The request's JSON body (at most MAX_BODY bytes). @param {http.IncomingMessage} req */
async function readJson(req) {
  const type = String(req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  if (type !== 'application/json') throw new HttpError(415, 'send a JSON body (content-type: application/json)');
  if (Number(req.headers['content-length']) > MAX_BODY) throw new HttpError(413, `the body is over ${MAX_BODY} bytes`);
  const chunks = [];
  let size = 0;
  for await (const chunk of req) { // read to the end (an answer before that would reset the connection)
    size += chunk.length;
    if (size <= MAX_BODY) chunks.push(chunk);
  }
  if (size > MAX_BODY) throw new HttpError(413, `the body is over ${MAX_BODY} bytes`);
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch (error) {
    throw new HttpError(400, `the body is not valid JSON: ${/** @type {Error} */ (error).message}`);
  }
}

/** summarize's params from a request body, or 400. @param {unknown} body */
function summarizeParams(body) {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new HttpError(400, 'the body must be a JSON object: {"text": "...", "max_words": 5}');
  }
  const { text, max_words: maxWords, ...rest } = /** @type {Record<string, unknown>} */ (body);
  if (Object.keys(rest).length) throw new HttpError(400, `unknown fields: ${Object.keys(rest).join(', ')}`);
  if (typeof text !== 'string') throw new HttpError(400, '"text" must be a string');
  if (maxWords !== undefined && (!Number.isInteger(maxWords) || Number(maxWords) < 1)) {
    throw new HttpError(400, '"max_words" must be an integer >= 1');
  }
  return maxWords === undefined ? { text } : { text, max_words: maxWords };
}

/**
 * @param {import('mrq-client').Client} client
 * @param {{queue?: string}} [options]
 */
export function createApp(client, { queue = 'default' } = {}) {
  return http.createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    try {
      if (url.pathname === '/jobs') {
        if (req.method !== 'POST') throw new HttpError(405, 'POST a job to /jobs');
        const params = summarizeParams(await readJson(req));
        const id = await client.queueJob(TASK, params, { queue });
        send(res, 202, { id, status: `/jobs/${id}` });
        return;
      }
      const match = /^\/jobs\/([^/]+)$/.exec(url.pathname);
      if (match) {
        if (req.method !== 'GET') throw new HttpError(405, 'GET /jobs/<id>');
        send(res, 200, await jobStatus(client, match[1], url.searchParams.get('wait')));
        return;
      }
      throw new HttpError(404, 'not found: POST /jobs, GET /jobs/<id>');
    } catch (error) {
      if (error instanceof HttpError) send(res, error.status, { error: error.message });
      else if (error instanceof InvalidJob) send(res, 400, { error: error.message }); // nothing was queued
      else if (error instanceof StoreUnavailable) send(res, 503, { error: error.message }); // nothing was queued
      else {
        console.error(error);
        send(res, 500, { error: 'internal error' });
      }
    }
  });
}

/** @param {import('mrq-client').Client} client @param {string} id @param {string|null} wait */
async function jobStatus(client, id, wait) {
  const seconds = wait === null ? 0 : Number(wait);
  if (!(seconds >= 0 && seconds <= MAX_WAIT)) throw new HttpError(400, `"wait" must be 0 to ${MAX_WAIT} seconds`);
  let job;
  try {
    job = await client.getJob(id);
    if (job && seconds > 0) {
      try {
        job = await client.waitJob(id, { timeout: seconds * 1000 });
      } catch (error) {
        if (!(error instanceof JobWaitTimeout)) throw error;
        job = await client.getJob(id);
      }
    }
  } catch (error) {
    if (error instanceof InvalidJobId || error instanceof JobNotFound) throw new HttpError(404, `no job ${id}`);
    throw error;
  }
  if (!job || job.path !== TASK) throw new HttpError(404, `no job ${id}`); // this API serves its own jobs only
  const body = { id, status: job.status, result: job.result ?? null };
  if (job.exceptiontype) body.error = job.exceptiontype;
  return body;
}

async function main() {
  const client = createClient(); // MRQ_REDIS, MRQ_MONGODB_JOBS, MRQ_REDIS_PREFIX
  const server = createApp(client, { queue: process.env.QUEUE || 'default' });
  const port = Number(process.env.PORT ?? 3000);
  server.listen(port, '127.0.0.1', () => {
    const address = /** @type {import('node:net').AddressInfo} */ (server.address());
    console.log(`listening on http://127.0.0.1:${address.port}`);
  });
  const stop = () => {
    server.close();
    server.closeAllConnections();
    client.close().finally(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === resolve(process.argv[1])) await main();
