/**
 * A Celery task message (protocol 2) in kombu's Redis envelope, as the Python client's
 * `send_task` writes it: the headers Celery 5 builds (`amqp.as_task_v2`), the body
 * `[args, kwargs, embed]` as JSON then base64, the properties kombu adds (`delivery_info`,
 * `delivery_tag`, `priority`, `body_encoding` ...), LPUSHed onto the list kombu reads for the
 * queue at priority 0 (its own name). The service's copy of this format, checked against
 * `send_task` the same way: celery_ext/redis_transport.py.
 */
import { randomUUID } from "node:crypto";
import { hostname } from "node:os";

import { isoformatUtc, kwargsRepr, pythonJson } from "./python.js";

// kombu's Redis transport: priority 0 is the list named as the queue; later steps are
// `<queue>\x06\x16<step>`. This client sends at priority 0, as the Python client does.
const PRIORITY_SEPARATOR = "\x06\x16";
const PRIORITY_STEPS = [0, 3, 6, 9] as const;
const PERSISTENT = 2; // kombu's delivery_mode for Celery's default (persistent) messages

/** The Redis lists holding `queue`'s messages, one per kombu priority step. */
export function queueLists(queue: string): string[] {
  return PRIORITY_STEPS.map((step) => (step === 0 ? queue : `${queue}${PRIORITY_SEPARATOR}${step}`));
}

export interface TaskMessage {
  task: string;
  taskId: string;
  /** The list to LPUSH onto. */
  list: string;
  /** The envelope as kombu stores it in the list. */
  envelope: string;
}

export interface MessageOptions {
  /** Unix seconds after which a worker discards the message unrun (`expires`). */
  expires?: number | undefined;
  /** What Celery puts in `reply_to` (its app's per-thread id): one per client. */
  replyTo: string;
  /** Celery's `origin`: `gen<pid>@<hostname>`. */
  origin?: string;
  /** Now, in Unix seconds (for the `expiration` property). */
  now?: number;
}

export const ORIGIN = `gen${process.pid}@${hostname()}`;

/** `send_task(task, kwargs=kwargs, task_id=taskId, expires=..., ignore_result=True)` to `queue`. */
export function taskMessage(
  task: string,
  taskId: string,
  kwargs: Readonly<Record<string, string>>,
  queue: string,
  options: MessageOptions,
): TaskMessage {
  const { expires, replyTo, origin = ORIGIN, now = Date.now() / 1000 } = options;
  const headers = {
    lang: "py", // the language of the task (Celery's field): the worker's tasks are Python
    task,
    id: taskId,
    shadow: null,
    eta: null,
    expires: expires === undefined ? null : isoformatUtc(expires),
    group: null,
    group_index: null,
    retries: 0,
    timelimit: [null, null],
    root_id: taskId,
    parent_id: null,
    argsrepr: "()",
    kwargsrepr: kwargsRepr(kwargs),
    origin,
    ignore_result: true,
    replaced_task_nesting: 0,
    stamped_headers: null,
    stamps: {},
  };
  const body = pythonJson([[], kwargs, { callbacks: null, errbacks: null, chain: null, chord: null }]);
  const properties = {
    correlation_id: taskId,
    reply_to: replyTo,
    delivery_mode: PERSISTENT,
    // Celery passes `expires` on as a TTL in ms (kombu's `expiration`), 0 once it has passed.
    ...(expires === undefined ? {} : { expiration: String(Math.trunc(Math.max(expires - now, 0) * 1000)) }),
    delivery_info: { exchange: "", routing_key: queue },
    priority: 0,
    body_encoding: "base64",
    delivery_tag: randomUUID(),
  };
  const envelope = pythonJson({
    body: Buffer.from(body, "utf8").toString("base64"),
    "content-encoding": "utf-8",
    "content-type": "application/json",
    headers,
    properties,
  });
  return { task, taskId, list: queueLists(queue)[0] as string, envelope };
}
