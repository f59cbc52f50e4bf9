/**
 * Answers without polling: one subscriber connection per client, multiplexing every waiting
 * call. A waiter subscribes to its task's result channel (`celery-task-meta-<task id>`, where
 * Celery's Redis backend PUBLISHes what it stores), then GETs the key, so an answer stored
 * before the subscription is not missed; after a reconnect (node-redis subscribes again before
 * it reports `ready`) every waiting key is read again. A waiter leaves on its answer, its
 * timeout or its AbortSignal, and the channel is unsubscribed when its last waiter leaves.
 */
import type { RedisClientType } from "@redis/client";

export type Redis = RedisClientType<{}, {}, {}, 2>;

/** Returns the verified answer in a stored value, or null for anything else (ignored). */
export type Opener<A> = (raw: string) => A | null;

interface Waiter {
  deliver(raw: string): void;
}

interface Channel {
  waiters: Set<Waiter>;
  subscribed: Promise<void>;
}

const RETRY_MS = 100;

export class AnswerBoard {
  readonly #channels = new Map<string, Channel>();
  readonly #closers = new Set<(error: Error) => void>();
  #subscriber: Redis | undefined;
  #readies = 0;

  constructor(
    private readonly commands: () => Redis,
    private readonly makeSubscriber: () => Redis,
    private readonly onError: (error: Error) => void,
  ) {}

  /** How many calls are waiting, and on how many channels (what a test checks is released). */
  get waiting(): { calls: number; channels: number } {
    let calls = 0;
    for (const channel of this.#channels.values()) calls += channel.waiters.size;
    return { calls, channels: this.#channels.size };
  }

  /** The first verified answer stored for `key` until `untilMs` (performance.now()), else null.
   * Rejects with the signal's reason on abort. */
  wait<A>(key: string, open: Opener<A>, untilMs: number, signal?: AbortSignal): Promise<A | null> {
    return new Promise<A | null>((resolve, reject) => {
      if (signal?.aborted) {
        reject(signal.reason);
        return;
      }
      let done = false;
      const finish = (then: () => void): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        this.#closers.delete(onClose);
        this.#leave(key, waiter);
        then();
      };
      const waiter: Waiter = {
        deliver: (raw) => {
          const found = open(raw);
          if (found !== null) finish(() => resolve(found));
        },
      };
      const onAbort = (): void => finish(() => reject(signal?.reason));
      const onClose = (error: Error): void => finish(() => reject(error));
      const timer = setTimeout(() => finish(() => resolve(null)), Math.max(untilMs - performance.now(), 0));
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#closers.add(onClose);
      void (async () => {
        // Subscribe, then read; on a connection error, again (the timer ends the wait).
        while (!done) {
          try {
            await this.#join(key, waiter);
            if (!done) await this.#read(key, [waiter]);
            return;
          } catch (error) {
            this.onError(error as Error);
            await new Promise((again) => setTimeout(again, RETRY_MS));
          }
        }
      })();
    });
  }

  #join(key: string, waiter: Waiter): Promise<void> {
    let channel = this.#channels.get(key);
    if (channel === undefined) {
      const waiters = new Set<Waiter>();
      const subscribed = this.#listener().subscribe(key, (message) => {
        for (const one of [...waiters]) one.deliver(message);
      });
      channel = { waiters, subscribed };
      this.#channels.set(key, channel);
      const joined = channel;
      subscribed.catch(() => {
        // Not subscribed: the next try subscribes afresh.
        if (this.#channels.get(key) === joined) this.#channels.delete(key);
      });
    }
    channel.waiters.add(waiter);
    return channel.subscribed;
  }

  #leave(key: string, waiter: Waiter): void {
    const channel = this.#channels.get(key);
    if (channel === undefined || !channel.waiters.delete(waiter) || channel.waiters.size > 0) return;
    this.#channels.delete(key);
    if (this.#subscriber?.isOpen) this.#subscriber.unsubscribe(key).catch((error: Error) => this.onError(error));
  }

  async #read(key: string, waiters: Iterable<Waiter>): Promise<void> {
    const raw = await this.commands().get(key);
    if (raw !== null) for (const waiter of [...waiters]) waiter.deliver(raw);
  }

  #listener(): Redis {
    if (this.#subscriber === undefined) {
      const subscriber = this.makeSubscriber();
      subscriber.on("error", this.onError);
      subscriber.on("ready", () => {
        // A reconnect: node-redis has subscribed again; read what was stored meanwhile.
        this.#readies += 1;
        if (this.#readies === 1) return;
        for (const [key, channel] of this.#channels) {
          this.#read(key, channel.waiters).catch((error: Error) => this.onError(error));
        }
      });
      subscriber.connect().catch((error: Error) => this.onError(error));
      this.#subscriber = subscriber;
    }
    return this.#subscriber;
  }

  /** Ends every wait (rejected with `error`) and closes the subscriber connection. */
  async close(error: Error): Promise<void> {
    for (const close of [...this.#closers]) close(error);
    const subscriber = this.#subscriber;
    this.#subscriber = undefined;
    this.#readies = 0;
    if (subscriber === undefined) return;
    if (subscriber.isReady) await subscriber.close();
    else if (subscriber.isOpen) subscriber.destroy();
  }
}
