// The errors mrq-client throws: one class per cause, named as in mrq's Python package
// (mrq/exceptions.py), all under MrqError.

/** Root of every error thrown by mrq-client. */
export class MrqError extends Error {
  /** @param {string} message @param {ErrorOptions} [options] */
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The job cannot be queued as given (bad path, queue, params; too large). Nothing was stored. */
export class InvalidJob extends MrqError {}

/** A queue name no job may be queued on. A kind of InvalidJob: nothing was stored. */
export class InvalidQueueName extends InvalidJob {}

/** The settings (URIs, prefix, timeouts) are invalid. */
export class ConfigError extends MrqError {}

/** Redis or MongoDB cannot be reached or refused the command (the message names the URI,
 * never its password). `store` is "Redis" or "MongoDB". */
export class StoreUnavailable extends MrqError {
  /** @param {"Redis"|"MongoDB"} store @param {string} message @param {ErrorOptions} [options] */
  constructor(store, message, options) {
    super(message, options);
    this.store = store;
  }
}

/** A job id that is not the 24-character hex form of an ObjectId. */
export class InvalidJobId extends MrqError {
  /** @param {unknown} jobId */
  constructor(jobId) {
    super(`job id must be a 24-character hex string (a MongoDB ObjectId), got ${describe(jobId)}`);
    this.jobId = jobId;
  }
}

/** No job with this id exists (it was never queued, or it expired). */
export class JobNotFound extends MrqError {
  /** @param {string} jobId */
  constructor(jobId) {
    super(`no job ${jobId} (never queued, or expired and removed)`);
    this.jobId = jobId;
  }
}

/** waitJob's timeout passed before the job reached a final status. `status` is the last one seen. */
export class JobWaitTimeout extends MrqError {
  /** @param {string} jobId @param {string} status @param {number} timeout milliseconds */
  constructor(jobId, status, timeout) {
    super(`job ${jobId} still ${status} after ${timeout} ms`);
    this.jobId = jobId;
    this.status = status;
    this.timeout = timeout;
    this.code = 'ETIMEDOUT';
  }
}

/** A short description of a value for error messages (its type, and the value when short).
 * @param {unknown} value */
export function describe(value) {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'string') {
    const shown = value.length > 60 ? `${value.slice(0, 60)}...` : value;
    return `the string ${JSON.stringify(shown)}`;
  }
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') {
    return `the ${typeof value} ${String(value)}`;
  }
  if (typeof value === 'function') return 'a function';
  if (typeof value === 'symbol') return 'a symbol';
  const proto = Object.getPrototypeOf(value);
  const name = proto && proto.constructor && proto.constructor.name;
  return name ? `an instance of ${name}` : 'an object';
}
