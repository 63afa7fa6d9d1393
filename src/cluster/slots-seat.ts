// A request of this gateway in the shared slots (cluster/shared-slots.ts): its ticket and where
// it is (entering: its ENTER call in flight; waiting; running: it holds a lease; local: it went on
// in the process-local scheduler when Redis went down; done), and what /admin/live and /metrics
// read of them.
import { keySlotCap, type KeySlots } from '../admission/fair-queue.js';
import type { Admission, EnterOptions, SchedulerSnapshot, SlotServer, Ticket } from '../admission/scheduler.js';

export type SeatState = 'entering' | 'waiting' | 'running' | 'done' | 'local';

/** One request of this process in the shared slots: its ticket, as admission and failover hold it. */
export class SharedSeat implements Ticket {
  readonly immediate = false;
  readonly cancel = (): void => this.onCancel(this);
  readonly admitted: Promise<Admission>;
  state: SeatState = 'entering';
  /** the process-local ticket it went on with (Redis went down) */
  local: Ticket | undefined = undefined;
  #server: SlotServer | undefined = undefined;
  resolve!: (a: Admission) => void;
  reject!: (err: Error) => void;
  timer: NodeJS.Timeout | undefined = undefined;
  preferTimer: NodeJS.Timeout | undefined = undefined;

  constructor(
    readonly onCancel: (seat: SharedSeat) => void,
    readonly id: string,
    readonly key: string,
    readonly group: string,
    readonly candidates: readonly SlotServer[],
    readonly weight: number,
    readonly opts: EnterOptions | undefined,
  ) {
    this.admitted = new Promise<Admission>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    this.admitted.catch(() => {}); // rejections are read by the admission plugin, or by nobody (failover gave up)
  }

  get started(): boolean {
    return this.local !== undefined ? this.local.started : this.#server !== undefined;
  }

  get server(): SlotServer | undefined {
    return this.local !== undefined ? this.local.server : this.#server;
  }

  /** granted: it runs on `server` */
  run(server: SlotServer): void {
    this.state = 'running';
    this.#server = server;
  }
}

/** The most slots one request may ever take on these servers (as Scheduler's). */
export function most(keySlots: KeySlots, candidates: readonly SlotServer[]): number {
  let total = 0;
  let biggest = 0;
  for (const s of candidates) {
    total += s.slots;
    if (s.slots > biggest) biggest = s.slots;
  }
  return Math.min(keySlotCap(keySlots, total), biggest);
}

/** `snap` (the process-local scheduler's) with this process's shared requests added. */
export function addSeats(snap: SchedulerSnapshot, seats: Iterable<SharedSeat>): SchedulerSnapshot {
  const groups = new Map(snap.groups.map((g) => [g.group, g]));
  const servers = new Map(snap.servers.map((s) => [s.index, s]));
  for (const seat of seats) {
    const running = seat.state === 'running';
    const w = running ? seat.weight : 0;
    let g = groups.get(seat.group);
    if (g === undefined) {
      g = { group: seat.group, running: 0, waiting: 0, keys: [] };
      groups.set(seat.group, g);
      snap.groups.push(g);
    }
    g.running += w;
    g.waiting += running ? 0 : 1;
    let k = g.keys.find((x) => x.key === seat.key);
    if (k === undefined) g.keys.push((k = { key: seat.key, running: 0, waiting: 0 }));
    k.running += w;
    k.waiting += running ? 0 : 1;
    if (running && seat.server !== undefined) {
      const s = servers.get(seat.server.index);
      if (s === undefined) {
        const added = { index: seat.server.index, running: w };
        servers.set(added.index, added);
        snap.servers.push(added);
      } else s.running += w;
    }
    snap.running += w;
    snap.waiting += running ? 0 : 1;
  }
  return snap;
}
