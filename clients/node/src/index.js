// mrq-client: queue mrq jobs from Node.js (docs/storage.md is the protocol it follows).

export { Client, createClient } from './client.js';
export { MAX_DEPENDENCIES, ON_FAILURE } from './dependencies.js';
export {
  ConfigError, InvalidJob, InvalidJobId, InvalidQueueName, JobNotFound, JobWaitTimeout, MrqError, StoreUnavailable,
} from './errors.js';
export {
  DEFAULT_QUEUE, FINAL_STATUSES, MAX_DOCUMENT_BYTES, MAX_PARAMS_DEPTH, Keys, queueKind, validateJobQueue,
  validateTaskPath,
} from './protocol.js';
