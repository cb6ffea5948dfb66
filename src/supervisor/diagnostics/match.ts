import { CATALOGUE_DATA } from "./catalogue.js";
import { Catalogue, type Advice, type CatalogueInput, type Conditions, type Diagnosis, type VmFacts } from "./types.js";

interface CompiledSignature {
  id: string;
  re: RegExp;
  title: string;
  explanation: string;
  fix: Advice[];
  priority: number;
  appliesTo?: Conditions;
  collect?: { re: RegExp; format?: string; max: number };
  context: number;
  withdrawnBy?: RegExp;
}

interface CompiledStall {
  id: string;
  lastLine?: RegExp;
  seenBefore?: RegExp;
  title: string;
  explanation: string;
  fix: Advice[];
  appliesTo?: Conditions;
}

export interface CompiledCatalogue {
  signatures: CompiledSignature[];
  stalls: CompiledStall[];
  knownGood: { re: RegExp; what: string }[];
}

/** Validates catalogue data and compiles its expressions; a bad entry is reported by id. */
export function compileCatalogue(data: CatalogueInput): CompiledCatalogue {
  const cat = Catalogue.parse(data);
  const re = (id: string, source: string, flags = ""): RegExp => {
    try {
      return new RegExp(source, flags);
    } catch (err) {
      throw new Error(`diagnostics catalogue entry "${id}": bad pattern ${source}: ${(err as Error).message}`);
    }
  };
  const ids = new Set<string>();
  for (const { id } of [...cat.signatures, ...cat.stalls]) {
    if (ids.has(id)) throw new Error(`diagnostics catalogue: id "${id}" is used twice`);
    ids.add(id);
  }
  return {
    signatures: cat.signatures.map((s) => ({
      id: s.id,
      re: re(s.id, s.pattern, s.flags),
      title: s.title,
      explanation: s.explanation,
      fix: s.fix,
      priority: s.priority,
      appliesTo: s.appliesTo,
      collect: s.collect ? { re: re(s.id, s.collect.pattern, s.flags), format: s.collect.format, max: s.collect.max } : undefined,
      context: s.context,
      withdrawnBy: s.withdrawnBy ? re(s.id, s.withdrawnBy, s.flags) : undefined,
    })),
    stalls: cat.stalls.map((s) => ({
      id: s.id,
      lastLine: s.lastLine ? re(s.id, s.lastLine) : undefined,
      seenBefore: s.seenBefore ? re(s.id, s.seenBefore) : undefined,
      title: s.title,
      explanation: s.explanation,
      fix: s.fix,
      appliesTo: s.appliesTo,
    })),
    knownGood: cat.knownGood.map((k) => ({ re: re(k.what, k.pattern), what: k.what })),
  };
}

export const CATALOGUE: CompiledCatalogue = compileCatalogue(CATALOGUE_DATA);

export const PLACEHOLDERS = ["name", "generation", "cpus", "memoryMiB", "template", "secureBoot", "disk", "tried", "quiet", "lastLine"] as const;

export function holds(c: Conditions | undefined, f: VmFacts, triedCount = 0): boolean {
  if (!c) return true;
  if (c.generation !== undefined && c.generation !== f.generation) return false;
  if (c.firmware !== undefined && c.firmware !== (f.generation === 1 ? "bios" : "uefi")) return false;
  if (c.cpusAtMost !== undefined && f.cpus > c.cpusAtMost) return false;
  if (c.cpusAtLeast !== undefined && f.cpus < c.cpusAtLeast) return false;
  if (c.secureBoot !== undefined && c.secureBoot !== f.secureBoot) return false;
  if (c.template !== undefined && !c.template.includes(f.secureBootTemplate)) return false;
  if (c.hasDisk !== undefined && c.hasDisk !== f.disks.length > 0) return false;
  if (c.hasDvd !== undefined && c.hasDvd !== f.dvds > 0) return false;
  if (c.hasNic !== undefined && c.hasNic !== f.nics > 0) return false;
  if (c.tried !== undefined && c.tried !== (triedCount > 0 ? "some" : "none")) return false;
  return true;
}

function render(text: string, vars: Record<string, string>, groups: readonly (string | undefined)[] = []): string {
  return text.replace(/\{(\$\d|[A-Za-z]+)\}/g, (whole, key: string) => {
    if (key.startsWith("$")) return groups[Number(key.slice(1))] ?? "";
    return vars[key] ?? whole;
  });
}

function factVars(f: VmFacts): Record<string, string> {
  return {
    name: f.name,
    generation: String(f.generation),
    cpus: String(f.cpus),
    memoryMiB: String(f.memoryMiB),
    template: f.secureBootTemplate,
    secureBoot: f.secureBoot ? "on" : "off",
    disk: f.disks[0] ?? "DISK",
  };
}

function advise(fix: Advice[], f: VmFacts, vars: Record<string, string>, groups: readonly (string | undefined)[], tried: number): string {
  return fix
    .filter((a) => holds(a.when, f, tried))
    .map((a) => render(a.text, vars, groups))
    .join(" ");
}

/** At most this many lines of one boot are kept (evidence and `{tried}` come from them). */
const WINDOW = 1000;
const STALL_EVIDENCE = 6;

export type Change = { kind: "set"; diagnosis: Diagnosis } | { kind: "cleared"; previous: Diagnosis; reason: string };

/**
 * Follows one VM's console, line by line, and keeps its current diagnosis: the highest-priority
 * signature seen in this boot, or a stall when the console went quiet before the guest was up.
 * Pure apart from the clock, which is injected.
 */
export class BootMatcher {
  private window: string[] = [];
  private current?: { d: Diagnosis; priority: number; withdrawnBy?: RegExp };
  private up = false;
  /** Whether this boot was watched from its start; a stall is judged only then. */
  private fromStart = true;

  constructor(
    private facts: VmFacts,
    private readonly cat: CompiledCatalogue = CATALOGUE,
    private readonly now: () => Date = () => new Date(),
  ) {}

  get diagnosis(): Diagnosis | null {
    return this.current?.d ?? null;
  }

  /** Whether the guest reached a known-good point (a prompt, a ready line) in this boot. */
  get guestUp(): boolean {
    return this.up;
  }

  setFacts(f: VmFacts): void {
    this.facts = f;
  }

  /** Takes over a diagnosis made before (a restarted service adopting a running VM). */
  restore(d: Diagnosis): void {
    const sig = this.cat.signatures.find((s) => s.id === d.id);
    this.current = { d, priority: sig?.priority ?? 0, withdrawnBy: sig?.withdrawnBy };
  }

  /** The guest was reset: a new boot starts (the diagnosis stays until something replaces it). */
  newBoot(): void {
    this.window = [];
    this.up = false;
    this.fromStart = true;
  }

  /**
   * The guest was already running when watching began (restored from saved state, or adopted by
   * a restarted service): its quiet console says nothing about a boot, until it is reset.
   */
  notFromStart(): void {
    this.fromStart = false;
  }

  /** The guest is known to run (its agent answers): a quiet console is no stall. */
  markUp(): void {
    this.up = true;
  }

  /** Feeds one console line; returns what changed (a diagnosis withdrawn, one made), in order. */
  line(text: string): Change[] {
    const changes: Change[] = [];
    const cur = this.current;
    if (cur && (cur.d.kind === "stall" || cur.withdrawnBy?.test(text))) {
      this.current = undefined;
      changes.push({ kind: "cleared", previous: cur.d, reason: cur.d.kind === "stall" ? `the console printed again: ${text}` : `the boot went on: ${text}` });
    }
    const good = this.cat.knownGood.find((k) => k.re.test(text));
    if (good) {
      this.up = true;
      this.window = [];
      if (this.current) changes.push({ kind: "cleared", previous: this.current.d, reason: `the guest reached ${good.what}` });
      this.current = undefined;
      return changes;
    }
    this.window.push(text);
    if (this.window.length > WINDOW) this.window.splice(0, this.window.length - WINDOW);
    const set = this.match(text);
    if (set) changes.push(set);
    return changes;
  }

  /**
   * An unterminated last line (firmware prints ">>Start PXE over IPv4." and its newline only
   * when the attempt ends): matched like a line, but not kept; the whole line comes later.
   */
  partial(text: string): Change[] {
    const t = text.trim();
    if (!t) return [];
    this.window.push(t);
    try {
      const set = this.match(t);
      return set ? [set] : [];
    } finally {
      this.window.pop();
    }
  }

  /** The best signature on the window's last line, when it beats the current diagnosis. */
  private match(text: string): Change | undefined {
    let best: { sig: CompiledSignature; m: RegExpExecArray } | undefined;
    for (const sig of this.cat.signatures) {
      if (best && sig.priority <= best.sig.priority) continue;
      if (!holds(sig.appliesTo, this.facts)) continue;
      const m = sig.re.exec(text);
      if (m) best = { sig, m };
    }
    if (!best) return undefined;
    if (this.current && (this.current.priority > best.sig.priority || this.current.d.id === best.sig.id)) return undefined;
    const d = this.build(best.sig, best.m);
    this.current = { d, priority: best.sig.priority, withdrawnBy: best.sig.withdrawnBy };
    return { kind: "set", diagnosis: d };
  }

  private build(sig: CompiledSignature, m: RegExpExecArray): Diagnosis {
    const last = this.window.length - 1;
    const keep = new Set<number>([last]);
    for (let i = Math.max(0, last - sig.context); i < last; i++) keep.add(i);
    const tried: string[] = [];
    if (sig.collect) {
      const found: number[] = [];
      for (let i = 0; i < last; i++) if (sig.collect.re.test(this.window[i]!)) found.push(i);
      for (const i of found.slice(-sig.collect.max)) {
        keep.add(i);
        const cm = sig.collect.re.exec(this.window[i]!)!;
        const prev = (this.window[i - 1] ?? "").replace(/[.\s]+$/, "");
        tried.push(sig.collect.format ? render(sig.collect.format, { prev }, [...cm]) : this.window[i]!);
      }
    }
    const vars = { ...factVars(this.facts), tried: tried.join("; ") };
    const groups = [...m];
    return {
      id: sig.id,
      kind: "signature",
      title: render(sig.title, vars, groups).trim(),
      explanation: render(sig.explanation, vars, groups),
      fix: advise(sig.fix, this.facts, vars, groups, tried.length),
      at: this.now().toISOString(),
      evidence: [...keep].sort((a, b) => a - b).map((i) => this.window[i]!),
    };
  }

  /**
   * Called now and then while the VM runs: a boot that printed something, is not up and has
   * been quiet for `thresholdSeconds` is diagnosed as stalled; output withdraws that again.
   * `pending` is an unterminated last line (a prompt).
   */
  stall(quietSeconds: number, thresholdSeconds: number, pending = ""): Change | undefined {
    const cur = this.current;
    if (cur?.d.kind === "stall" && quietSeconds < thresholdSeconds) {
      this.current = undefined;
      return { kind: "cleared", previous: cur.d, reason: "the console printed again" };
    }
    if (thresholdSeconds <= 0 || cur || this.up || !this.fromStart) return undefined;
    const tail = pending.trim();
    const good = tail ? this.cat.knownGood.find((k) => k.re.test(tail)) : undefined;
    if (good) {
      this.up = true;
      return undefined;
    }
    if (quietSeconds < thresholdSeconds) return undefined;
    const lastLine = tail || this.window.at(-1);
    if (lastLine === undefined) return undefined;
    const seen = tail ? this.window : this.window.slice(0, -1);
    const rule = this.cat.stalls.find(
      (r) => holds(r.appliesTo, this.facts) && (!r.lastLine || r.lastLine.test(lastLine)) && (!r.seenBefore || seen.some((l) => r.seenBefore!.test(l))),
    );
    if (!rule) return undefined;
    const vars = { ...factVars(this.facts), quiet: String(Math.round(quietSeconds)), lastLine };
    const d: Diagnosis = {
      id: rule.id,
      kind: "stall",
      title: render(rule.title, vars),
      explanation: render(rule.explanation, vars),
      fix: advise(rule.fix, this.facts, vars, [], 0),
      at: this.now().toISOString(),
      evidence: [...this.window.slice(-STALL_EVIDENCE), ...(tail ? [tail] : [])].slice(-STALL_EVIDENCE),
    };
    this.current = { d, priority: 0 };
    return { kind: "set", diagnosis: d };
  }
}

/** The diagnosis a whole console (e.g. a fixture) leads to for a VM with these settings. */
export function diagnose(lines: readonly string[], facts: VmFacts, cat: CompiledCatalogue = CATALOGUE): Diagnosis | null {
  const m = new BootMatcher(facts, cat, () => new Date(0));
  for (const l of lines) m.line(l);
  return m.diagnosis;
}
