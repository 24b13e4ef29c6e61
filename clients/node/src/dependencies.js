// Jobs that wait for other jobs, written as mrq's Python producer writes them
// (mrq/queue/producer.py dependency_ids, check_dependencies_exist; mrq/lifecycle/dependencies.py
// register, settle), step by step as docs/storage.md ("A job that waits for others") tells:
//
//   1. before anything is stored: every dependency must be a job in the store;
//   2. the job is inserted `waiting`, with `depends_on` and `dependencies_ended: []`; no push;
//   3. it is added to its dependencies' `dependents` ($addToSet): from then on, a dependency that
//      ends settles it (its worker's final write, guarded on the dependents it read, misses);
//   4. the dependencies that had already ended are read, and settle it here: one that ended
//      `success` (any, with onDependencyFailure "run") joins `dependencies_ended`, and the update
//      that completes the list queues the job (`waiting` -> `queued`, then its id pushed, only by
//      the caller whose transition applied); one that ended otherwise cancels it with the reason
//      (`DependencyFailed`), and in turn whatever waits for it.
//
// Every step is a set addition or a guarded transition: a worker settling the same job at the
// same time cannot queue it twice. A producer that stops between 2 and 4 leaves the job waiting:
// mrq's RequeueLostJobs settles it (maintenance.resettle_waiting).

import { ObjectId } from 'mongodb';

import { InvalidJob, describe } from './errors.js';
import { CANCEL, DEFAULT_QUEUE, DEPENDENCY_ENDS, HISTORY_LIMIT, QUEUED, SUCCESS, WAITING } from './protocol.js';

/** What a waiting job does when a dependency ends otherwise than `success`. */
export const ON_FAILURE = Object.freeze(['cancel', 'run']);
/** A job may wait for at most this many jobs. */
export const MAX_DEPENDENCIES = 10_000;
const DEPENDENCY_FAILED = 'DependencyFailed';
const HEX_ID = /^[0-9a-fA-F]{24}$/;
/** Ids per `$in` of the existence check. */
const CHUNK = 1000;

/**
 * @typedef {object} DependencyStore what settling needs from the client
 * @property {import('mongodb').Collection} jobs
 * @property {number} defaultJobTtl ms a job cancelled here is kept (mrq's default_job_ttl)
 * @property {(queue: string, ids: ObjectId[]) => Promise<void>} push put queued ids on their queue, as queueJobs does
 *
 * @typedef {{jobId: ObjectId, status: string, dependents: ObjectId[]}} Ended a job that ended, with what waits for it
 */

/**
 * `dependsOn` as distinct ObjectIds, in order (mrq/queue/producer.py dependency_ids). Throws
 * InvalidJob for an unknown failure policy, anything else than job ids, or too many of them.
 * @param {unknown} dependsOn @param {unknown} onFailure @returns {ObjectId[]}
 */
export function dependencyIds(dependsOn, onFailure = 'cancel') {
  if (!ON_FAILURE.includes(/** @type {string} */ (onFailure))) {
    throw new InvalidJob(`onDependencyFailure must be one of ${ON_FAILURE.join(', ')}, got ${describe(onFailure)}`);
  }
  if (dependsOn === undefined || dependsOn === null) return [];
  if (!Array.isArray(dependsOn)) {
    throw new InvalidJob(`dependsOn must be an array of job ids, got ${describe(dependsOn)}`);
  }
  /** @type {Map<string, ObjectId>} */
  const found = new Map();
  for (const item of dependsOn) {
    const id = asObjectId(item);
    if (id === null) {
      throw new InvalidJob(`dependsOn must list job ids (24-character hex strings or ObjectIds), got ${describe(item)}`);
    }
    if (!found.has(id.toHexString())) found.set(id.toHexString(), id);
  }
  if (found.size > MAX_DEPENDENCIES) {
    throw new InvalidJob(`dependsOn lists ${found.size} jobs; a job may wait for at most ${MAX_DEPENDENCIES} ` +
      '(chain groups of jobs through one job instead)');
  }
  return [...found.values()];
}

/** @param {unknown} item @returns {ObjectId|null} */
function asObjectId(item) {
  if (typeof item === 'string') return HEX_ID.test(item) ? ObjectId.createFromHexString(item) : null;
  if (item instanceof ObjectId) return item;
  if (/** @type {any} */ (item)?._bsontype === 'ObjectId') { // another copy of the bson package
    return ObjectId.createFromHexString(/** @type {any} */ (item).toHexString());
  }
  return null;
}

/**
 * The fields a job queued with dependencies stores instead of `queued` (mrq/lifecycle/documents.py
 * waiting_fields): assigned onto a new job document, `status` keeps its place.
 * @param {ObjectId[]} dependsOn @param {string} onFailure
 */
export function waitingFields(dependsOn, onFailure) {
  /** @type {Record<string, unknown>} */
  const fields = { status: WAITING, depends_on: dependsOn, dependencies_ended: [] };
  if (onFailure !== 'cancel') fields.on_dependency_failure = onFailure;
  return fields;
}

/**
 * Step 1: every dependency is a job in the store, else InvalidJob naming the first missing one.
 * @param {import('mongodb').Collection} jobs @param {ObjectId[]} dependsOn
 */
export async function checkDependenciesExist(jobs, dependsOn) {
  /** @type {Set<string>} */
  const known = new Set();
  for (let start = 0; start < dependsOn.length; start += CHUNK) {
    const chunk = dependsOn.slice(start, start + CHUNK);
    for await (const doc of jobs.find({ _id: { $in: chunk } }, { projection: { _id: 1 } })) {
      known.add(doc._id.toHexString());
    }
  }
  const missing = dependsOn.filter((id) => !known.has(id.toHexString()));
  if (missing.length) {
    const more = missing.length > 1 ? ` (and ${missing.length - 1} more)` : '';
    throw new InvalidJob(`dependsOn: no job ${missing[0].toHexString()}${more} in the store: it never existed, ` +
      'or ended and expired');
  }
}

/**
 * Steps 3 and 4, after inserting waiting jobs (mrq/lifecycle/dependencies.py register).
 * @param {DependencyStore} store @param {ObjectId[]} newIds @param {ObjectId[]} dependsOn
 */
export async function register(store, newIds, dependsOn) {
  await store.jobs.updateMany({ _id: { $in: dependsOn } }, { $addToSet: { dependents: { $each: newIds } } });
  const ended = await store.jobs.find({ _id: { $in: dependsOn }, status: { $in: [...DEPENDENCY_ENDS] } },
    { projection: { status: 1 } }).toArray();
  if (ended.length) {
    await settle(store, ended.map((doc) => ({ jobId: doc._id, status: doc.status, dependents: newIds })));
  }
}

/**
 * Tell each dependent of `ended` that it ended; a dependent cancelled here is settled in turn
 * for its own dependents (mrq/lifecycle/dependencies.py settle).
 * @param {DependencyStore} store @param {Ended[]} ended
 */
export async function settle(store, ended) {
  let work = ended.filter((one) => one.dependents.length && DEPENDENCY_ENDS.includes(one.status));
  /** @type {Set<string>} */
  const seen = new Set();
  while (work.length) {
    const round = work;
    work = [];
    for (const { dependent, parents } of byDependent(round)) {
      const failed = parents.find((parent) => parent.status !== SUCCESS);
      const cancelled = failed ? await cancel(store, dependent, failed) : null;
      if (cancelled) {
        if (!seen.has(dependent.toHexString())) {
          seen.add(dependent.toHexString());
          work.push(cancelled);
        }
        continue;
      }
      await note(store, dependent, parents.map((parent) => parent.jobId));
    }
  }
}

/** One entry per dependent, with every job of `round` it waited for, in order. @param {Ended[]} round */
function byDependent(round) {
  /** @type {Map<string, {dependent: ObjectId, parents: Ended[]}>} */
  const found = new Map();
  for (const one of round) {
    for (const dependent of one.dependents) {
      const key = dependent.toHexString();
      if (!found.has(key)) found.set(key, { dependent, parents: [] });
      /** @type {{parents: Ended[]}} */ (found.get(key)).parents.push(one);
    }
  }
  return found.values();
}

/**
 * Add ended dependencies to a waiting job; queue it when they are all there. True when this call
 * queued it (and pushed its id).
 * @param {DependencyStore} store @param {ObjectId} dependent @param {ObjectId[]} parents
 */
async function note(store, dependent, parents) {
  const doc = await store.jobs.findOneAndUpdate({ _id: dependent, status: WAITING },
    { $addToSet: { dependencies_ended: { $each: parents } } },
    { projection: { depends_on: 1, dependencies_ended: 1, queue: 1 }, returnDocument: 'after' });
  if (doc === null) return false;
  const ended = new Set((doc.dependencies_ended ?? []).map((/** @type {ObjectId} */ id) => id.toHexString()));
  if (!(doc.depends_on ?? []).every((/** @type {ObjectId} */ id) => ended.has(id.toHexString()))) return false;
  const now = new Date();
  const result = await store.jobs.updateOne({ _id: dependent, status: WAITING },
    { $set: { status: QUEUED, datequeued: now, dateupdated: now } });
  if (result.modifiedCount !== 1) return false;
  await store.push(doc.queue ?? DEFAULT_QUEUE, [dependent]);
  return true;
}

/** Why a job was cancelled, word for word as mrq writes it (dependencies.failure_reason).
 * @param {ObjectId} parent @param {string} status */
export function failureReason(parent, status) {
  return `${DEPENDENCY_FAILED}: dependency ${parent.toHexString()} ended ${status}, so this job was cancelled ` +
    "without running (queue it with on_dependency_failure='run' to run it whatever its dependencies end with)";
}

/**
 * Cancel a waiting job whose dependency failed, unless it runs anyway: the job, now ended, with
 * its own dependents, or null when it was not cancelled.
 * @param {DependencyStore} store @param {ObjectId} dependent @param {Ended} parent @returns {Promise<Ended|null>}
 */
async function cancel(store, dependent, parent) {
  const now = new Date();
  const reason = failureReason(parent.jobId, parent.status);
  const entry = { date: now, status: CANCEL, exceptiontype: DEPENDENCY_FAILED, traceback: reason, worker: null,
    dependency: parent.jobId };
  const update = {
    $set: { status: CANCEL, dateupdated: now, datefinished: now, dateexpires: new Date(now.getTime() + store.defaultJobTtl),
      exceptiontype: DEPENDENCY_FAILED, traceback: reason },
    $push: { traceback_history: { $each: [entry], $slice: -HISTORY_LIMIT } },
  };
  const doc = await store.jobs.findOneAndUpdate({ _id: dependent, status: WAITING, on_dependency_failure: { $ne: 'run' } },
    update, { projection: { dependents: 1 }, returnDocument: 'after' });
  return doc === null ? null : { jobId: dependent, status: CANCEL, dependents: doc.dependents ?? [] };
}
