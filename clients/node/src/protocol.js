// mrq's storage protocol (docs/storage.md) as far as a producer needs it: statuses, key names,
// and the checks mrq applies to a task path and a queue name before it stores anything. Each
// definition names the Python code it follows; a change there must be made here too.

import { InvalidJob, InvalidQueueName, describe } from './errors.js';

// --- statuses (mrq/lifecycle/statuses.py) ---------------------------------------------------------

export const QUEUED = 'queued';
/** A job stored to wait for its dependencies (mrq/lifecycle/dependencies.py). */
export const WAITING = 'waiting';
export const SUCCESS = 'success';
export const CANCEL = 'cancel';
export const DEFAULT_QUEUE = 'default';
/** Statuses a job ends in: it runs again only if someone requeues it. */
export const FINAL_STATUSES = Object.freeze(
  new Set(['success', 'failed', 'maxretries', 'timeout', 'abort', 'cancel', 'interrupt']),
);
/** The statuses that settle a job waiting for this one, sorted as Python sends them
 * (dependencies.DEPENDENCY_ENDS: `interrupt` is not one, such a job is queued again). */
export const DEPENDENCY_ENDS = Object.freeze(['abort', 'cancel', 'failed', 'maxretries', 'success', 'timeout']);
/** `traceback_history` keeps the newest entries only (mrq/lifecycle/documents.py HISTORY_LIMIT). */
export const HISTORY_LIMIT = 50;

// --- MongoDB (mrq/storage/mongo.py, mrq/queue/producer.py) ----------------------------------------

export const JOBS_COLLECTION = 'mrq_jobs';
/** MongoDB refuses documents over 16 MiB; mrq keeps room for the fields added while the job runs. */
export const MAX_DOCUMENT_BYTES = 16 * 1024 * 1024 - 64 * 1024;
/** mongod stores documents nested at most 180 levels; the job document is one level above its params. */
export const MAX_PARAMS_DEPTH = 179;
/** Seconds a stats hash is kept (mrq/stats.py RETENTION). */
export const STATS_RETENTION = 2 * 3600 + 120;

// --- task paths (mrq/task/paths.py validate_task_path) --------------------------------------------

const TASK_PATH = /^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+$/;

/** @param {unknown} path @returns {string} */
export function validateTaskPath(path) {
  if (typeof path !== 'string' || !TASK_PATH.test(path)) {
    throw new InvalidJob(`task path must be a dotted Python path like 'tasks.io.Fetch', got ${describe(path)}`);
  }
  return path;
}

// --- queue names (mrq/storage/keys.py validate_queue_name, validate_job_queue) --------------------

const PART = '[A-Za-z0-9_\\-.@+=]+';
const QUEUE_NAME = new RegExp(`^(?:/${PART}|${PART}(?:/${PART})*)$`);
const QUEUE_CHAR = /^[A-Za-z0-9_\-.@+=/]$/;
export const MAX_QUEUE_NAME = 200;
export const REVERSE_SUFFIX = '_reverse';
/** Raw queue kinds by name suffix, longest first (mrq/queue/base.py RAW_SUFFIXES). */
const RAW_SUFFIXES = ['_timed_set', '_sorted_set', '_set', '_raw'];

/** The name as Python's repr() shows it, near enough for a message. @param {string} text */
function quoted(text) {
  return `'${JSON.stringify(text).slice(1, -1).replace(/\\"/g, '"').replace(/'/g, "\\'")}'`;
}

/**
 * A queue name a job may be queued on, else InvalidQueueName saying why: letters, digits and
 * `_ - . @ + =`, `/` between subqueue parts, at most 200 characters, not ending in `_reverse`.
 * As in mrq, `main/` is accepted (a queue of that name) and `/main` is a plain queue.
 * @param {unknown} name @returns {string}
 */
export function validateJobQueue(name) {
  if (typeof name !== 'string') {
    throw new InvalidQueueName(`queue name must be a string, got ${describe(name)}`);
  }
  if (!name) throw new InvalidQueueName('queue name is empty');
  if ([...name].length > MAX_QUEUE_NAME) {
    throw new InvalidQueueName(`queue name is longer than ${MAX_QUEUE_NAME} characters`);
  }
  if (name.startsWith('/') && name.slice(1).includes('/')) {
    throw new InvalidQueueName(`queue name ${quoted(name)}: a name starting with '/' is a plain queue, with no subqueues`);
  }
  // validate_job_queue allows the subqueue wildcard form `name/` unless the name starts with '/'.
  const base = name.endsWith('/') && !name.startsWith('/') ? name.slice(0, -1) : name;
  if (!QUEUE_NAME.test(base)) {
    const bad = [...new Set([...base].filter((c) => !QUEUE_CHAR.test(c)))].sort();
    if (bad.length) {
      throw new InvalidQueueName(
        `queue name ${quoted(name)} contains ${bad.map(quoted).join(', ')}: use letters, digits and _ - . @ + =, ` +
          "with '/' between subqueue parts",
      );
    }
    throw new InvalidQueueName(`queue name ${quoted(name)}: empty part between '/' separators`);
  }
  if (name.endsWith(REVERSE_SUFFIX)) {
    const root = name.slice(0, -REVERSE_SUFFIX.length);
    throw new InvalidQueueName(
      `queue name ${quoted(name)} ends with ${REVERSE_SUFFIX}: that form only tells a worker to take the queue ` +
        `${quoted(root)} newest first (mrq-worker ${name}); queue jobs on ${quoted(root)}`,
    );
  }
  return name;
}

/** 'regular' or the raw kind ('raw', 'set', 'sorted_set', 'timed_set') of a queue name; subqueues
 * share their root's kind (mrq/queue/base.py queue_kind). @param {string} name */
export function queueKind(name) {
  const root = name.split('/', 1)[0];
  for (const suffix of RAW_SUFFIXES) {
    if (root.endsWith(suffix)) return suffix.slice(1);
  }
  return 'regular';
}

/** The root of a queue (before the first '/'; `/main` is its own root) and whether it is a
 * subqueue (mrq/queue/base.py Queue.__init__). @param {string} name */
export function queueParts(name) {
  const plain = name.startsWith('/');
  return { root: plain ? name : name.split('/', 1)[0], isSubqueue: !plain && name.includes('/') };
}

// --- Redis key names (mrq/storage/keys.py Keys) ---------------------------------------------------

/** What `redis_prefix` may be (mrq/config.py _validate). */
export const REDIS_PREFIX = /^[A-Za-z0-9_.-]{1,64}$/;

/** Key and channel names for one `redis_prefix`. */
export class Keys {
  /** @param {string} prefix */
  constructor(prefix) {
    this.prefix = prefix;
  }

  /** LIST of a regular queue's queued ids. @param {string} queue */
  queueIds(queue) {
    return `{${this.prefix}:q:${queue}}:ids`;
  }

  /** ZSET of every known queue name, all scored 0. */
  get knownQueues() {
    return `{${this.prefix}:queues}:names`;
  }

  /** ZSET subqueue name -> unix time a producer last noted it. */
  get queuesSeen() {
    return `{${this.prefix}:queues}:seen`;
  }

  /** SET of the subqueues of a root. @param {string} root */
  subqueues(root) {
    return `{${this.prefix}:queues}:sub:${root}`;
  }

  /** HASH of one minute's counts (unix time // 60). @param {number} minute */
  stats(minute) {
    return `${this.prefix}:stats:${minute}`;
  }

  /** Channel idle workers of a queue listen on. @param {string} queue */
  notifyChannel(queue) {
    return `${this.prefix}:notify:${queue}`;
  }
}
