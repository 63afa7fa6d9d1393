// What the menu's keys do: start, stop and restart the llama-servers, the gateway and the tunnel
// under PM2 (in order, each checked before it starts and watched for a moment after), show their
// logs and the doctor's checklist. A llama key acts on every llama-server of pm2-config.json.
// pm2-config.json is read again for every action, so edits apply at once. The screen it writes to
// is menu-screen.ts; the loop that reads keys is in menu.ts.
// Over 300 lines: the actions share the start/stop ordering and the settle check, which would
// otherwise be passed around between files.
import { basename, dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { doctor, formatDoctor } from './doctor.js';
import { logLinePrinter, tailLines, type PrettyFactory } from './log-lines.js';
import type { KeyQueue } from './menu-keys.js';
import { drawStatus, healthLines, type Screen } from './menu-screen.js';
import { instanceLabel, instancesOf, type Pm2, type ProcessState } from './pm2.js';
import { stackFindings, startBlockers, type Finding } from './stack/findings.js';
import { pm2App } from './stack/pm2-apps.js';
import {
  StackConfigError,
  isLlamaApp,
  loadStackConfig,
  writeDefaultStackConfig,
  type ProcessName,
  type ProcessSpec,
  type StackConfig,
} from './stack/pm2-config.js';
import { gatewayEnvironment, gatewaySettings, type Env } from './stack/settings.js';
import { ensureTunnelTemplate, tunnelTemplateHelp } from './stack/tunnel-file.js';

export interface ActionOptions {
  /** pm2-config.json; written with the defaults when missing. */
  readonly configPath: string;
  /** Where settings and PATH are read; .env is read as the gateway does. */
  readonly env: Env;
  /** How long to watch freshly started processes before saying whether they stayed up. */
  readonly settleMs: number;
  /** Lines shown by the log keys. */
  readonly logLines: number;
}

const START_ORDER: readonly ProcessName[] = ['llama', 'gateway', 'tunnel'];
const STOP_ORDER: readonly ProcessName[] = ['tunnel', 'gateway', 'llama'];

const PROCESS_BY_DIGIT: Readonly<Record<string, ProcessName>> = {
  1: 'llama',
  2: 'gateway',
  3: 'tunnel',
  4: 'llama',
  5: 'gateway',
  6: 'tunnel',
};

const STOP_KEY: Readonly<Record<ProcessName, string>> = { llama: '4', gateway: '5', tunnel: '6' };

export class Menu {
  readonly #pm2: Pm2;
  readonly #screen: Screen;
  readonly #opts: ActionOptions;
  readonly #env: Env;
  readonly #configPath: string;
  readonly #pretty: (line: string) => string;

  constructor(pm2: Pm2, screen: Screen, opts: ActionOptions, prettyFactory: PrettyFactory) {
    this.#pm2 = pm2;
    this.#screen = screen;
    this.#opts = opts;
    this.#env = opts.env;
    this.#configPath = resolve(opts.configPath);
    this.#pretty = logLinePrinter(prettyFactory, screen.color);
  }

  /** pm2-config.json, read again for every action so edits apply at once. */
  #tryStack(): { stack: StackConfig; error?: undefined } | { stack: null; error: StackConfigError } {
    try {
      return { stack: loadStackConfig(this.#configPath) };
    } catch (err) {
      if (err instanceof StackConfigError) return { stack: null, error: err };
      throw err;
    }
  }

  /** The config for an action, or null after saying what is wrong with it. */
  #stack(): StackConfig | null {
    const { stack, error } = this.#tryStack();
    if (error !== undefined) {
      this.#screen.note(this.#screen.paint('red', `✘ ${basename(error.file)} has problems:`));
      for (const p of error.problems) this.#screen.note(`    ${p}`);
    }
    return stack;
  }

  #gatewayPort(stack: StackConfig): number {
    try {
      return gatewaySettings(gatewayEnvironment(stack, this.#env)).config?.port ?? 8787;
    } catch {
      return 8787; // .env unreadable: said under the table
    }
  }

  /** First run: write pm2-config.json and the cloudflared template if they are missing. */
  prepare(): void {
    if (writeDefaultStackConfig(this.#configPath)) {
      this.#screen.note(
        this.#screen.paint(
          'yellow',
          `Wrote ${this.#configPath} with the defaults. Put your model's path where it says <path/to/model.gguf>`,
        ),
      );
      this.#screen.note(
        this.#screen.paint('yellow', 'and your tunnel name where it says <tunnel-name>, or set "enabled": false for what you do not run.'),
      );
    }
    const { stack } = this.#tryStack(); // problems are shown with the table
    if (stack !== null && stack.processes.tunnel.enabled) this.#tunnelTemplate(stack);
  }

  #tunnelTemplate(stack: StackConfig): void {
    const outcome = ensureTunnelTemplate(stack, this.#gatewayPort(stack));
    if (outcome.status === 'written')
      for (const line of tunnelTemplateHelp(outcome.path)) this.#screen.note(this.#screen.paint('yellow', line));
  }

  /** Gathers what the status page shows and draws it. */
  async draw(): Promise<void> {
    const { stack, error } = this.#tryStack();
    const [states, health] = await Promise.all([this.#pm2.list(), healthLines(this.#screen, stack, this.#env)]);
    let findings: Pick<Finding, 'level' | 'text'>[] = [];
    if (error === undefined) {
      try {
        findings = stackFindings(stack, this.#env).filter((f) => f.level !== 'ok');
      } catch (err) {
        findings = [{ level: 'fail', text: (err as Error).message }]; // e.g. an unreadable .env
      }
    }
    drawStatus(this.#screen, { configPath: this.#configPath, pm2Home: this.#pm2.home, states, health, stack, error, findings });
  }

  /** Runs one key; false when the key quits. */
  async handle(key: string, keys: KeyQueue): Promise<boolean> {
    try {
      switch (key) {
        case 'q':
          return false;
        case 'a':
        case '7':
          await this.#start(START_ORDER, true);
          break;
        case 'k':
        case '8':
          await this.#stop(STOP_ORDER, true);
          break;
        case '0':
        case '\n':
          break;
        case '1':
        case '2':
        case '3':
          await this.#start([PROCESS_BY_DIGIT[key]!], false);
          break;
        case '4':
        case '5':
        case '6':
          await this.#stop([PROCESS_BY_DIGIT[key]!], false);
          break;
        case 'l':
        case 'g':
        case 't':
          await this.#restart(key === 'l' ? 'llama' : key === 'g' ? 'gateway' : 'tunnel');
          break;
        case '9':
        case 'G':
        case 'L':
        case 'T':
          await this.#logs(key === 'L' ? 'llama' : key === 'T' ? 'tunnel' : 'gateway');
          await this.#pause(keys);
          break;
        case 'd':
          await this.#doctor();
          await this.#pause(keys);
          break;
        case 'h':
        case '?':
          break; // the keys are on the screen
        default:
          this.#screen.note(`Unknown key ${JSON.stringify(key)}: the keys are listed at the bottom.`);
      }
    } catch (err) {
      this.#screen.note(this.#screen.paint('red', `✘ ${(err as Error).message}`));
    }
    return true;
  }

  /** On a terminal that the next redraw clears, wait for a key first. */
  async #pause(keys: KeyQueue): Promise<void> {
    if (!this.#screen.clears) return;
    this.#screen.write(this.#screen.paint('dim', 'Press any key for the menu '));
    await keys.next();
  }

  /** The processes of some kinds, in that order (a llama key means every llama-server of the file). */
  #specs(stack: StackConfig, kinds: readonly ProcessName[]): ProcessSpec[] {
    return kinds.flatMap((kind) => (kind === 'llama' ? stack.processes.llama : [stack.processes[kind]]));
  }

  /**
   * The PM2 names of a kind: those of the file (when it reads), then any other llama-server PM2
   * runs under a llama name (left from an earlier file: "llama" before the file had a list).
   */
  async #appNames(kind: ProcessName): Promise<string[]> {
    const { stack } = this.#tryStack();
    const names = stack === null ? [kind] : this.#specs(stack, [kind]).map((spec) => spec.app);
    if (kind === 'llama') for (const p of await this.#pm2.list()) if (isLlamaApp(p.name) && !names.includes(p.name)) names.push(p.name);
    return names;
  }

  async #start(kinds: readonly ProcessName[], all: boolean): Promise<void> {
    const s = this.#screen;
    const stack = this.#stack();
    if (stack === null) return;
    const started: ProcessSpec[] = [];
    for (const spec of this.#specs(stack, kinds)) {
      const { app } = spec;
      if (!spec.enabled) {
        if (!all) s.note(`${app} is off in ${basename(stack.file)} ("enabled": false).`);
        continue;
      }
      if (spec.name === 'tunnel') this.#tunnelTemplate(stack);
      const blockers = startBlockers(stack, spec, this.#env);
      if (blockers.length > 0) {
        s.note(`${s.paint('red', '✘')} ${app} not started: ${blockers.join('; ')}`);
        continue;
      }
      const current = await this.#pm2.find(app);
      if (current?.status === 'online') {
        s.note(`${app} is already online (pid ${current.pid ?? '?'}).`);
        continue;
      }
      s.line(`Starting ${app}…`);
      // A fresh definition each time, so edits to pm2-config.json apply.
      if (current !== undefined) await this.#pm2.delete(app);
      try {
        await this.#pm2.start(pm2App(stack, spec, this.#env));
        started.push(spec);
      } catch (err) {
        s.note(`${s.paint('red', '✘')} ${app} did not start: ${(err as Error).message}`);
      }
    }
    await this.#settle(started);
  }

  /** Watches what was just started for a moment and says whether it stayed up. */
  async #settle(specs: readonly ProcessSpec[]): Promise<void> {
    if (specs.length === 0) return;
    await sleep(this.#opts.settleMs);
    const states = await this.#pm2.list();
    const s = this.#screen;
    for (const { app, name, instances } of specs) {
      // A gateway in cluster mode: every instance must have stayed up; the first one that did not is shown.
      const ps = instancesOf(states, app);
      const up = ps.filter((x) => x.status === 'online' && x.restarts === 0);
      if (ps.length > 1 && up.length === ps.length && ps.length === instances) {
        s.note(`${s.paint('green', '✔')} ${app} online: ${instances} instances (pids ${ps.map((x) => x.pid ?? '?').join(', ')})`);
        continue;
      }
      const p: ProcessState | undefined = ps.find((x) => !up.includes(x)) ?? ps[0];
      if (ps.length === 1 && p !== undefined && p.status === 'online' && p.restarts === 0) {
        s.note(`${s.paint('green', '✔')} ${app} online (pid ${p.pid ?? '?'})`);
        continue;
      }
      const how =
        p === undefined ? 'gone' : `${p.status}${p.restarts > 0 ? `, restarted ${p.restarts} time${p.restarts === 1 ? '' : 's'}` : ''}`;
      s.note(`${s.paint('red', '✘')} ${app} did not stay up (${how}). Its last log lines:`);
      const lines = [...(tailLines(p?.errLog ?? '', 6) ?? []), ...(tailLines(p?.outLog ?? '', 4) ?? [])];
      for (const l of lines.length > 0 ? lines : ['(nothing logged)']) s.note(`    ${this.#pretty(l)}`);
      if (p !== undefined && p.status !== 'stopped') s.note(`    PM2 keeps restarting it; ${STOP_KEY[name]} stops it.`);
    }
  }

  async #stop(kinds: readonly ProcessName[], all: boolean): Promise<void> {
    const s = this.#screen;
    let stopped = 0;
    for (const kind of kinds) {
      let running = 0;
      for (const app of await this.#appNames(kind)) {
        const current = await this.#pm2.find(app);
        if (current === undefined || current.status === 'stopped') continue;
        s.line(`Stopping ${app}…`);
        await this.#pm2.stop(app);
        running++;
        s.note(`■ ${app} stopped`);
      }
      if (!all && running === 0) s.note(`${kind} is not running.`);
      stopped += running;
    }
    if (all && stopped === 0) s.note('Nothing was running.');
  }

  async #restart(kind: ProcessName): Promise<void> {
    const s = this.#screen;
    const stack = this.#stack();
    if (stack === null) return;
    const restarted: ProcessSpec[] = [];
    for (const spec of this.#specs(stack, [kind])) {
      const { app } = spec;
      if (!spec.enabled) {
        s.note(`${app} is off in ${basename(stack.file)} ("enabled": false).`);
        continue;
      }
      const blockers = startBlockers(stack, spec, this.#env);
      if (blockers.length > 0) {
        s.note(`${s.paint('red', '✘')} ${app} not restarted: ${blockers.join('; ')}`);
        continue;
      }
      const current = await this.#pm2.find(app);
      s.line(`Restarting ${app}…`);
      if (current !== undefined) await this.#pm2.delete(app);
      await this.#pm2.start(pm2App(stack, spec, this.#env));
      restarted.push(spec);
    }
    await this.#settle(restarted);
  }

  /** The last lines of each process of a kind (every llama-server, one after the other). */
  async #logs(kind: ProcessName): Promise<void> {
    const s = this.#screen;
    const apps = await this.#appNames(kind);
    // A gateway in cluster mode has a log per instance (gateway-out-<id>.log): each is shown.
    const states = await this.#pm2.list();
    const each = apps.flatMap((app): { name: string; p: ProcessState | undefined }[] => {
      const ps = instancesOf(states, app);
      return ps.length === 0 ? [{ name: app, p: undefined }] : ps.map((p) => ({ name: instanceLabel(p, ps.length), p }));
    });
    const count = each.length > 1 ? Math.max(5, Math.ceil(this.#opts.logLines / each.length)) : this.#opts.logLines;
    s.clear();
    for (const { name, p } of each) {
      const out = p?.outLog ?? join(this.#pm2.home, 'logs', `${name}-out.log`);
      const err = p?.errLog ?? join(this.#pm2.home, 'logs', `${name}-error.log`);
      const outLines = tailLines(out, count);
      s.line(s.paint('cyan', `── ${name}: last ${count} lines of ${out}`));
      for (const l of outLines ?? [`(no log yet: ${name} has not run under this PM2)`]) s.line(this.#pretty(l));
      const errLines = tailLines(err, Math.ceil(count / 2));
      if (errLines !== null && errLines.length > 0) {
        s.line(s.paint('cyan', `── ${name}: last ${errLines.length} lines of ${err}`));
        for (const l of errLines) s.line(this.#pretty(l));
      }
    }
    s.line(s.paint('dim', `── live: pm2 logs ${apps.length === 1 ? apps[0]! : `'/^${kind}/'`}  (PM2_HOME=${this.#pm2.home})`));
  }

  async #doctor(): Promise<void> {
    this.#screen.clear();
    const sections = await doctor({
      env: this.#env,
      cwd: dirname(this.#configPath),
      configPath: this.#configPath,
      pm2Home: this.#pm2.home,
      pm2: this.#pm2,
    });
    this.#screen.write(formatDoctor(sections, this.#screen.color));
  }
}
