import { spawn } from "node:child_process";
import { constants, existsSync } from "node:fs";
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { z } from "zod";
import { writeFileAtomic } from "../../util/atomic.js";
import { VmhostError } from "../../util/errors.js";
import { findQemuBinary, qemuVersionOf } from "./host.js";

/**
 * Accelerator probe. /dev/kvm existing is not enough: on some hosts (nested sandboxes) it opens and
 * starts guests, but guest code is emulated thousands of times slower than native, and OVMF fails
 * under it. So KVM is chosen only when a tiny calibrated guest runs clearly faster under KVM than
 * under TCG, both timed on the host from bytes the guest writes to its serial port.
 */

export type Accelerator = "kvm" | "tcg";

export interface AccelDecision {
  accel: Accelerator;
  reason: string;
  tcgLoopMs?: number;
  kvmLoopMs?: number;
  /** Set when the KVM loop was stopped unfinished after this many ms (kvmLoopMs is then absent). */
  kvmLoopUnfinishedMs?: number;
  probedAt: string;
  qemuVersion?: string;
  bootId?: string;
}

/** ~100 ms under TCG on the reference machine (2 vCPU, QEMU 7.2): 3-4 ns per iteration. */
export const PROBE_ITERATIONS = 30_000_000;
export const DEFAULT_PROBE_TIMEOUT_MS = 3000;
/** KVM must take less than this fraction of the TCG loop time. Native is ~10x faster. */
export const KVM_MAX_RATIO = 0.5;
/** Without a TCG figure to compare against: native runs the loop at well under 2 ns per iteration. */
const NATIVE_MAX_NS_PER_ITERATION = 2;
/** Once TCG is done, an unfinished KVM loop is stopped at this multiple of the TCG time: the answer is known. */
const KVM_CUTOFF_FACTOR = 2;
const KVM_CUTOFF_MIN_MS = 100;

export const SERIAL_START_BYTE = 0x53; // 'S'
export const SERIAL_END_BYTE = 0x45; // 'E'
export const DEBUG_EXIT_PORT = 0xf4;
const COM1 = 0x3f8;

export const ROM_SIZE = 0x10000;
/** Offsets inside the ROM (mapped at linear 0xF0000). */
export const ROM_LAYOUT = { entry: 0x0000, gdtr: 0x0040, gdt: 0x0048, code32: 0x0080, resetVector: 0xfff0 } as const;
const ROM_BASE = 0xf0000;

const le16 = (v: number): number[] => [v & 0xff, (v >>> 8) & 0xff];
const le32 = (v: number): number[] => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];

/**
 * A 64 KiB flat ROM for `-bios`: no firmware needed. The reset vector far-jumps to F000:0000; that code
 * writes 'S' to COM1, switches to 32-bit protected mode, counts ECX down from `iterations`, writes 'E'
 * and exits QEMU through isa-debug-exit. The loop runs in protected mode because kernel code does:
 * KVM on hosts without "unrestricted guest" emulates real mode, which would look like a fake KVM, and
 * the fake KVM of the sandbox this was built on never gets through the switch at all. 'S' comes
 * before the switch so that such a guest is seen to start and can be stopped early.
 */
export function buildProbeRom(iterations: number = PROBE_ITERATIONS): Uint8Array {
  if (!Number.isInteger(iterations) || iterations < 1 || iterations > 0xffffffff) {
    throw new RangeError(`iterations must be an integer in 1..2^32-1, got ${iterations}`);
  }
  const rom = new Uint8Array(ROM_SIZE).fill(0xf4); // hlt everywhere else
  const put = (offset: number, bytes: number[]): void => rom.set(bytes, offset);

  // 16-bit real mode at F000:0000.
  put(ROM_LAYOUT.entry, [
    0xfa, //                                       cli
    0xba, ...le16(COM1), //                        mov dx, 0x3f8
    0xb0, SERIAL_START_BYTE, //                    mov al, 'S'
    0xee, //                                       out dx, al
    0x66, 0x2e, 0x0f, 0x01, 0x16, ...le16(ROM_LAYOUT.gdtr), // o32 lgdt cs:[gdtr]
    0x0f, 0x20, 0xc0, //                           mov eax, cr0
    0x0c, 0x01, //                                 or al, 1 (PE)
    0x0f, 0x22, 0xc0, //                           mov cr0, eax
    0x66, 0xea, ...le32(ROM_BASE + ROM_LAYOUT.code32), ...le16(0x08), // jmp dword 0x08:code32
  ]);
  put(ROM_LAYOUT.gdtr, [...le16(3 * 8 - 1), ...le32(ROM_BASE + ROM_LAYOUT.gdt)]);
  put(ROM_LAYOUT.gdt, [
    0, 0, 0, 0, 0, 0, 0, 0, //                                 null
    0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xcf, 0x00, //         0x08: flat 32-bit code
    0xff, 0xff, 0x00, 0x00, 0x00, 0x92, 0xcf, 0x00, //         0x10: flat data
  ]);
  // 32-bit protected mode.
  put(ROM_LAYOUT.code32, [
    0xb9, ...le32(iterations), //          mov ecx, N
    0x49, //                         loop: dec ecx
    0x75, 0xfd, //                         jnz loop
    0xb0, SERIAL_END_BYTE, //              mov al, 'E'
    0xee, //                               out dx, al  (dx still 0x3f8)
    0x31, 0xc0, //                         xor eax, eax
    0xe6, DEBUG_EXIT_PORT, //              out 0xf4, al  (QEMU exits with status 1)
    0xf4, //                         halt: hlt
    0xeb, 0xfd, //                         jmp halt
  ]);
  // Reset vector (linear 0xFFFFFFF0 = ROM offset 0xFFF0): jmp far F000:0000.
  put(ROM_LAYOUT.resetVector, [0xea, ...le16(ROM_LAYOUT.entry), ...le16(0xf000)]);
  return rom;
}

/** What the probe observed; the decision is a pure function of it. */
export interface ProbeMeasurements {
  /** /dev/kvm exists and opens read-write. */
  kvmAvailable: boolean;
  /** Why not, as an errno code: "ENOENT" means absent. */
  kvmDeviceError?: string;
  /** The KVM guest did not run: QEMU's message. */
  kvmError?: string;
  /** KVM loop time when it finished. */
  kvmMs?: number;
  /** The KVM loop was stopped (timeout or cutoff) unfinished after this long. */
  kvmUnfinishedMs?: number;
  tcgMs?: number;
  tcgError?: string;
  iterations?: number;
}

export function formatMs(ms: number): string {
  return ms < 10 ? ms.toFixed(1) : String(Math.round(ms));
}

export function decide(m: ProbeMeasurements): { accel: Accelerator; reason: string } {
  const tcg = (reason: string): { accel: Accelerator; reason: string } => ({ accel: "tcg", reason });
  if (!m.kvmAvailable) {
    const code = m.kvmDeviceError ?? "ENOENT";
    return tcg(code === "ENOENT" ? "/dev/kvm not present" : `/dev/kvm present but not accessible: ${code}`);
  }
  if (m.kvmError !== undefined) {
    return tcg(`KVM failed to start: ${m.kvmError}`);
  }
  const tcgPart = m.tcgMs !== undefined ? ` vs ${formatMs(m.tcgMs)} ms under TCG` : "";
  if (m.kvmMs === undefined) {
    const took = m.kvmUnfinishedMs !== undefined ? `>${formatMs(m.kvmUnfinishedMs)} ms` : "too long";
    return tcg(`/dev/kvm present but guest code is emulated (loop took ${took} under KVM${tcgPart})`);
  }
  if (m.tcgMs === undefined) {
    // Nothing to compare with (TCG itself failed): judge KVM against what native hardware does.
    const boundMs = ((m.iterations ?? PROBE_ITERATIONS) * NATIVE_MAX_NS_PER_ITERATION) / 1e6;
    const tcgNote = m.tcgError !== undefined ? `; TCG probe failed: ${m.tcgError}` : "";
    return m.kvmMs <= boundMs
      ? { accel: "kvm", reason: `KVM runs guest code natively (${formatMs(m.kvmMs)} ms${tcgNote})` }
      : tcg(`/dev/kvm present but guest code is emulated (loop took ${formatMs(m.kvmMs)} ms under KVM${tcgNote})`);
  }
  if (m.kvmMs < m.tcgMs * KVM_MAX_RATIO) {
    return { accel: "kvm", reason: `KVM runs guest code natively (${formatMs(m.kvmMs)} ms vs ${formatMs(m.tcgMs)} ms under TCG)` };
  }
  return tcg(`/dev/kvm present but guest code is emulated (loop took ${formatMs(m.kvmMs)} ms under KVM${tcgPart})`);
}

interface GuestRun {
  loopMs?: number;
  unfinishedMs?: number;
  error?: string;
}

interface RunningGuest {
  done: Promise<GuestRun>;
  /** Stop the guest if its loop has not finished after `ms` (counted from the start byte). */
  limitLoop(ms: number): void;
}

export function probeQemuArgs(accel: Accelerator, romPath: string): string[] {
  return [
    "-machine", "pc",
    "-accel", accel,
    "-m", "16",
    "-nodefaults",
    "-no-user-config",
    "-display", "none",
    "-serial", "stdio",
    "-bios", romPath,
    "-device", `isa-debug-exit,iobase=0x${DEBUG_EXIT_PORT.toString(16)},iosize=0x04`,
  ];
}

/** QEMU's stderr minus its warnings (e.g. unsupported CPUID bits under KVM), one line. */
function qemuMessage(stderr: string): string {
  const lines = stderr.split("\n").map((l) => l.trim()).filter((l) => l.length > 0);
  const errors = lines.filter((l) => !/\bwarning:/i.test(l));
  return (errors.length > 0 ? errors : lines).join("; ");
}

const TIMEOUT_BIN = "/usr/bin/timeout";

/**
 * The guest runs under coreutils `timeout` as a guard that outlives us: if vmhost is killed mid-probe,
 * a guest stuck under a fake KVM never exits by itself and would spin a CPU forever.
 */
function guestCommand(qemu: string, args: string[], timeoutMs: number): [string, string[]] {
  if (!existsSync(TIMEOUT_BIN)) return [qemu, args];
  return [TIMEOUT_BIN, ["--kill-after=1", `${Math.ceil(timeoutMs / 1000) + 2}s`, qemu, ...args]];
}

function startGuest(qemu: string, accel: Accelerator, romPath: string, timeoutMs: number): RunningGuest {
  const [cmd, argv] = guestCommand(qemu, probeQemuArgs(accel, romPath), timeoutMs);
  const child = spawn(cmd, argv, { stdio: ["ignore", "pipe", "pipe"] });
  const spawnedAt = performance.now();
  let startAt: number | undefined;
  let endAt: number | undefined;
  let stoppedAt: number | undefined;
  let spawnError: string | undefined;
  let stderr = "";
  let loopLimitMs: number | undefined;
  let limitTimer: NodeJS.Timeout | undefined;
  let graceTimer: NodeJS.Timeout | undefined;
  let killTimer: NodeJS.Timeout | undefined;

  // SIGTERM, which `timeout` forwards to QEMU (it exits in ~50 ms even with its vCPU stuck); SIGKILL if that fails.
  const stop = (): void => {
    if (stoppedAt !== undefined) return;
    stoppedAt = performance.now();
    child.kill("SIGTERM");
    killTimer = setTimeout(() => child.kill("SIGKILL"), 3000);
  };
  const armLimit = (): void => {
    if (startAt === undefined || loopLimitMs === undefined || endAt !== undefined) return;
    clearTimeout(limitTimer);
    limitTimer = setTimeout(stop, Math.max(0, startAt + loopLimitMs - performance.now()));
  };
  const overall = setTimeout(stop, timeoutMs);

  child.stdout.on("data", (chunk: Buffer) => {
    const now = performance.now();
    for (const b of chunk) {
      if (b === SERIAL_START_BYTE && startAt === undefined) {
        startAt = now;
        armLimit();
      } else if (b === SERIAL_END_BYTE && startAt !== undefined && endAt === undefined) {
        endAt = now;
        clearTimeout(limitTimer);
        // The guest exits by itself through isa-debug-exit; do not wait on it if that device misbehaves.
        graceTimer = setTimeout(stop, 1000);
      }
    }
  });
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (s: string) => {
    if (stderr.length < 16_384) stderr += s;
  });

  const done = new Promise<GuestRun>((resolveRun) => {
    const finish = (code: number | null, signal: NodeJS.Signals | null): void => {
      clearTimeout(overall);
      clearTimeout(limitTimer);
      clearTimeout(graceTimer);
      clearTimeout(killTimer);
      if (startAt !== undefined && endAt !== undefined) {
        resolveRun({ loopMs: endAt - startAt });
      } else if (spawnError !== undefined) {
        resolveRun({ error: spawnError });
      } else if (stoppedAt !== undefined) {
        // Stopped by us: the loop (or the boot up to it) did not finish in time.
        resolveRun({ unfinishedMs: stoppedAt - (startAt ?? spawnedAt) });
      } else {
        const msg = qemuMessage(stderr);
        const how = signal ? `killed by ${signal}` : `exited with status ${code}`;
        resolveRun({ error: msg || `QEMU ${how} before the guest finished its loop` });
      }
    };
    child.on("error", (err) => {
      spawnError = `${qemu}: ${err.message}`;
      finish(null, null);
    });
    child.on("close", finish);
  });

  return {
    done,
    limitLoop(ms: number): void {
      loopLimitMs = ms;
      armLimit();
    },
  };
}

async function kvmDeviceError(): Promise<string | undefined> {
  try {
    const fh = await open("/dev/kvm", constants.O_RDWR);
    await fh.close();
    return undefined;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code ?? String(err);
  }
}

export async function readBootId(): Promise<string | undefined> {
  try {
    const id = (await readFile("/proc/sys/kernel/random/boot_id", "utf8")).trim();
    return id.length > 0 ? id : undefined;
  } catch {
    return undefined;
  }
}

export async function probeAccelerator(opts: { qemuBinary?: string; timeoutMs?: number } = {}): Promise<AccelDecision> {
  const qemu = opts.qemuBinary ?? (await findQemuBinary());
  const timeoutMs = opts.timeoutMs ?? DEFAULT_PROBE_TIMEOUT_MS;
  const probedAt = new Date().toISOString();
  const versionP = qemuVersionOf(qemu).then((v) => v.version, () => undefined);
  const bootIdP = readBootId();
  const devError = await kvmDeviceError();

  const { tcgRun, kvmRun } = await runBothGuests(qemu, devError === undefined, timeoutMs);

  const m: ProbeMeasurements = { kvmAvailable: devError === undefined, iterations: PROBE_ITERATIONS };
  if (devError !== undefined) m.kvmDeviceError = devError;
  if (tcgRun.loopMs !== undefined) m.tcgMs = tcgRun.loopMs;
  else m.tcgError = tcgRun.error ?? `loop unfinished after ${formatMs(tcgRun.unfinishedMs ?? timeoutMs)} ms`;
  if (kvmRun) {
    if (kvmRun.loopMs !== undefined) m.kvmMs = kvmRun.loopMs;
    else if (kvmRun.error !== undefined) m.kvmError = kvmRun.error;
    else m.kvmUnfinishedMs = kvmRun.unfinishedMs ?? timeoutMs;
  }

  const d: AccelDecision = { ...decide(m), probedAt };
  if (m.tcgMs !== undefined) d.tcgLoopMs = round1(m.tcgMs);
  if (m.kvmMs !== undefined) d.kvmLoopMs = round1(m.kvmMs);
  if (m.kvmUnfinishedMs !== undefined) d.kvmLoopUnfinishedMs = round1(m.kvmUnfinishedMs);
  const [qemuVersion, bootId] = await Promise.all([versionP, bootIdP]);
  if (qemuVersion) d.qemuVersion = qemuVersion;
  if (bootId) d.bootId = bootId;
  return d;
}

async function runBothGuests(
  qemu: string,
  withKvm: boolean,
  timeoutMs: number,
): Promise<{ tcgRun: GuestRun; kvmRun?: GuestRun }> {
  const dir = await mkdtemp(join(tmpdir(), "vmhost-accel-"));
  try {
    const romPath = join(dir, "probe.rom");
    await writeFile(romPath, buildProbeRom(PROBE_ITERATIONS));
    // Side by side: on a real KVM host the KVM guest finishes long before TCG does.
    const tcgGuest = startGuest(qemu, "tcg", romPath, timeoutMs);
    const kvmGuest = withKvm ? startGuest(qemu, "kvm", romPath, timeoutMs) : undefined;
    const tcgRun = await tcgGuest.done;
    if (!kvmGuest) return { tcgRun };
    if (tcgRun.loopMs !== undefined) {
      kvmGuest.limitLoop(Math.max(tcgRun.loopMs * KVM_CUTOFF_FACTOR, KVM_CUTOFF_MIN_MS));
    }
    return { tcgRun, kvmRun: await kvmGuest.done };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const round1 = (ms: number): number => Math.round(ms * 10) / 10;

const decisionSchema = z.object({
  accel: z.enum(["kvm", "tcg"]),
  reason: z.string(),
  tcgLoopMs: z.number().optional(),
  kvmLoopMs: z.number().optional(),
  kvmLoopUnfinishedMs: z.number().optional(),
  probedAt: z.string(),
  qemuVersion: z.string().optional(),
  bootId: z.string().optional(),
});

/** The cached decision, or undefined when there is none or it cannot be read (a cache: the probe recreates it). */
async function readCachedDecision(cacheFile: string): Promise<AccelDecision | undefined> {
  let text: string;
  try {
    text = await readFile(cacheFile, "utf8");
  } catch {
    return undefined;
  }
  try {
    const parsed = decisionSchema.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The accelerator to use: VMHOST_ACCEL=tcg|kvm forces it; otherwise the probe's answer, cached in
 * `cacheFile` for as long as the host's boot id and the QEMU version stay the same.
 */
export async function resolveAccelerator(cacheFile: string, opts: { refresh?: boolean } = {}): Promise<AccelDecision> {
  const forced = process.env["VMHOST_ACCEL"];
  if (forced !== undefined && forced !== "") {
    if (forced !== "kvm" && forced !== "tcg") {
      throw new VmhostError("bad-env", `VMHOST_ACCEL=${forced} is not valid: use tcg or kvm (or unset it to probe)`);
    }
    return { accel: forced, reason: "forced by VMHOST_ACCEL", probedAt: new Date().toISOString() };
  }
  const qemu = await findQemuBinary();
  const [bootId, qemuVersion] = await Promise.all([readBootId(), qemuVersionOf(qemu).then((v) => v.version)]);
  if (!opts.refresh && bootId !== undefined) {
    const cached = await readCachedDecision(cacheFile);
    if (cached && cached.bootId === bootId && cached.qemuVersion === qemuVersion) return cached;
  }
  const decision = await probeAccelerator({ qemuBinary: qemu });
  await mkdir(dirname(cacheFile), { recursive: true });
  await writeFileAtomic(cacheFile, JSON.stringify(decision, null, 2) + "\n");
  return decision;
}
