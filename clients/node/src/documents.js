// Job documents as mrq's Python producer builds them (mrq/lifecycle/documents.py new_job,
// mrq/queue/producer.py prepare_jobs and _check_document), and the checks run on params before
// anything is stored: the same limits, in the same order.

import { BSON, Long } from 'mongodb';

import { InvalidJob, describe } from './errors.js';
import { MAX_DOCUMENT_BYTES, MAX_PARAMS_DEPTH, QUEUED } from './protocol.js';

const INT32_MIN = -(2 ** 31);
const INT32_MAX = 2 ** 31 - 1;
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const ALLOWED = 'objects, arrays, strings, numbers, booleans, null, Dates, bigints, ObjectIds and Buffers';

/** @param {unknown} value @returns {value is Record<string, unknown>} */
export function isPlainObject(value) {
  if (typeof value !== 'object' || value === null) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/**
 * Levels of non-empty plain objects and arrays in `value` as MongoDB counts them, stopping past
 * `limit` (iterative: a hostile or cyclic value cannot exhaust the stack). mrq/queue/producer.py
 * nesting_depth.
 * @param {unknown} value @param {number} limit
 */
export function nestingDepth(value, limit) {
  let deepest = 0;
  /** @type {Array<[unknown, number]>} */
  const stack = [[value, 1]];
  while (stack.length) {
    const [item, level] = /** @type {[unknown, number]} */ (stack.pop());
    let children;
    if (Array.isArray(item)) children = item;
    else if (isPlainObject(item)) children = Object.values(item);
    else continue;
    if (!children.length) continue;
    deepest = Math.max(deepest, level);
    if (deepest > limit) break;
    for (const child of children) stack.push([child, level + 1]);
  }
  return deepest;
}

/** `where` + a key, as JavaScript would write it. @param {string} where @param {string} key */
function member(where, key) {
  return /^[A-Za-z_$][A-Za-z0-9_$]*$/.test(key) ? `${where}.${key}` : `${where}[${JSON.stringify(key)}]`;
}

/**
 * A copy of one params value with the BSON types Python gives the same JSON value: integers
 * outside 32 bits (up to 2^53) become 64-bit integers (Python: int64; the driver would store a
 * double), bigints 64-bit integers. Refuses what MongoDB cannot store or Python cannot read back.
 * @param {unknown} value @param {string} where what the value is (`params.a[2]`)
 * @param {string} label which params object, for a batch (`params #3: `) @returns {unknown}
 */
function toStorable(value, where, label) {
  const refuse = (/** @type {string} */ why) => new InvalidJob(`${label}${where} ${why}`);
  switch (typeof value) {
    case 'boolean':
      return value;
    case 'string':
      if (!value.isWellFormed()) throw refuse('is a string with a lone UTF-16 surrogate (not valid UTF-8)');
      return value;
    case 'number':
      if (Number.isSafeInteger(value) && (value < INT32_MIN || value > INT32_MAX)) return Long.fromNumber(value);
      return value;
    case 'bigint':
      if (value < INT64_MIN || value > INT64_MAX) throw refuse(`is ${value}n, outside the 64-bit integers MongoDB stores`);
      return Long.fromBigInt(value);
    case 'object': {
      if (value === null) return null;
      if (Array.isArray(value)) {
        const out = new Array(value.length);
        for (let i = 0; i < value.length; i++) {
          if (!(i in value)) throw refuse(`has a hole at [${i}] (a sparse array)`);
          out[i] = toStorable(value[i], `${where}[${i}]`, label);
        }
        return out;
      }
      if (value instanceof Date) {
        if (Number.isNaN(value.getTime())) throw refuse('is an invalid Date');
        return value;
      }
      if (value instanceof Uint8Array) return value; // a Buffer: BSON binary, as Python's bytes
      if (typeof (/** @type {any} */ (value)._bsontype) === 'string') return value; // ObjectId, Long, Decimal128...
      if (isPlainObject(value)) {
        /** @type {Record<string, unknown>} */
        const out = {};
        for (const key of Object.keys(value)) {
          if (key.includes('\0')) throw refuse(`has a key with a NUL character (${JSON.stringify(key)})`);
          if (!key.isWellFormed()) throw refuse(`has a key with a lone UTF-16 surrogate (${JSON.stringify(key)})`);
          // defineProperty: a "__proto__" key (JSON.parse makes them) stays a key.
          Object.defineProperty(out, key, {
            value: toStorable(value[key], member(where, key), label),
            enumerable: true, writable: true, configurable: true,
          });
        }
        return out;
      }
      throw refuse(`is ${describe(value)}; params hold ${ALLOWED}`);
    }
    default: // undefined, function, symbol
      throw refuse(`is ${describe(value)}; params hold ${ALLOWED}`);
  }
}

/**
 * The params of job #index checked and converted: a plain object, nested at most 179 levels,
 * holding only storable values (mrq/queue/producer.py prepare_jobs, _check_document).
 * @param {unknown} params @param {number} index
 * @returns {Record<string, unknown>}
 */
export function storableParams(params, index) {
  if (!isPlainObject(params)) {
    throw new InvalidJob(`params #${index} must be a plain object (a JSON object), got ${describe(params)}`);
  }
  if (nestingDepth(params, MAX_PARAMS_DEPTH) > MAX_PARAMS_DEPTH) {
    throw new InvalidJob(`${index ? `params #${index}` : 'params'} nest more than ${MAX_PARAMS_DEPTH} levels of objects and arrays (or refer to ` +
      'themselves); MongoDB refuses documents nested that deep');
  }
  return /** @type {Record<string, unknown>} */ (toStorable(params, 'params', index ? `params #${index}: ` : ''));
}

/**
 * The document Python's queue_jobs inserts (mrq/lifecycle/documents.py new_job): same fields,
 * same order, same BSON types.
 * @param {import('mongodb').ObjectId} id @param {string} path @param {Record<string, unknown>} params
 * @param {string} queue @param {Date} now
 */
export function newJob(id, path, params, queue, now) {
  return { _id: id, path, params, queue, status: QUEUED, datequeued: now, dateupdated: now, retry_count: 0 };
}

/** Refuses a document over mrq's size limit. @param {object} doc @param {number} index */
export function checkSize(doc, index) {
  let size;
  try {
    size = BSON.calculateObjectSize(doc);
  } catch (error) {
    const label = index ? `params #${index}` : 'params';
    throw new InvalidJob(`${label} cannot be stored in MongoDB: ${/** @type {Error} */ (error).message}`);
  }
  if (size > MAX_DOCUMENT_BYTES) {
    throw new InvalidJob(
      `params #${index} make a ${(size / 1048576).toFixed(1)} MiB job document; MongoDB documents are limited to ` +
        '16 MiB (store large data elsewhere and pass a reference)',
    );
  }
}

/**
 * A job document as a plain object: `id` (hex string) instead of `_id`, ObjectIds as hex strings,
 * 64-bit integers as numbers (bigints beyond 2^53), dates as Date objects.
 * @param {Record<string, unknown>} doc
 */
export function plainJob(doc) {
  const { _id, ...fields } = doc;
  return { id: String(plain(_id)), .../** @type {Record<string, unknown>} */ (plain(fields)) };
}

/** @param {unknown} value @returns {unknown} */
function plain(value) {
  if (Array.isArray(value)) return value.map(plain);
  if (typeof value !== 'object' || value === null || value instanceof Date) return value;
  const type = /** @type {any} */ (value)._bsontype;
  if (type === 'ObjectId') return /** @type {any} */ (value).toHexString();
  if (type === 'Long') {
    const big = /** @type {Long} */ (value).toBigInt();
    return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
  }
  if (type === 'Binary') return Buffer.from(/** @type {any} */ (value).value()); // Python bytes: a Buffer
  if (type) return value;
  if (!isPlainObject(value)) return value;
  /** @type {Record<string, unknown>} */
  const out = {};
  for (const [key, item] of Object.entries(value)) {
    Object.defineProperty(out, key, { value: plain(item), enumerable: true, writable: true, configurable: true });
  }
  return out;
}
