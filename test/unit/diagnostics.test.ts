import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { cleanConsoleLines } from "../../src/supervisor/console-log.js";
import {
  BootDiagnostics,
  BootMatcher,
  CATALOGUE,
  CATALOGUE_DATA,
  PLACEHOLDERS,
  compileCatalogue,
  diagnose,
  readDiagnosis,
  readDiagnosisRecord,
  stallSecondsFromEnv,
  type Diagnosis,
  type DiagnosticsHost,
  type VmFacts,
} from "../../src/supervisor/diagnostics/index.js";
import { RunPaths, VmHome } from "../../src/home/vm-home.js";
import type { SupervisorEvents, VmRef } from "../../src/supervisor/supervisor.js";
import { buildArgv } from "../../src/engine/qemu/argv.js";
import { sampleVm } from "../helpers/sample-vm.js";
import type { VmConfig, VmState } from "../../src/model/schema.js";

const FIXTURES = resolve(dirname(fileURLToPath(import.meta.url)), "../../../test/fixtures/consoles");

async function lines(name: string): Promise<string[]> {
  return cleanConsoleLines(await readFile(join(FIXTURES, `${name}.console.txt`), "utf8"));
}

function facts(over: Partial<VmFacts> = {}): VmFacts {
  return {
    name: "vm1",
    generation: 2,
    cpus: 1,
    memoryMiB: 1024,
    secureBoot: false,
    secureBootTemplate: "MicrosoftUEFICertificateAuthority",
    disks: [],
    dvds: 0,
    nics: 0,
    ...over,
  };
}

const GEN1 = { generation: 1 as const };
const DISK = { disks: ["/var/lib/vmhost/disks/vm1.qcow2"] };
const SB = { secureBoot: true };

/** Each real capture (or the seed-000 transcription) and what it must be diagnosed as. */
const CASES: { fixture: string; facts: Partial<VmFacts>; id: string | null; check?: (d: Diagnosis) => void }[] = [
  {
    fixture: "seabios-no-disk",
    facts: GEN1,
    id: "bios-no-bootable-device",
    check: (d) => {
      assert.match(d.fix, /Tried: Booting from Hard Disk: could not read the boot disk; Booting from Floppy: could not read the boot disk\./);
      assert.match(d.fix, /no hard disk and no DVD: attach .*vmhost disk add vm1 --path DISK/);
      assert.ok(d.evidence.includes("No bootable device."));
    },
  },
  {
    fixture: "seabios-blank-disk",
    facts: { ...GEN1, ...DISK },
    id: "bios-no-bootable-device",
    check: (d) => {
      assert.match(d.fix, /Tried: Booting from Hard Disk: not a bootable disk\./);
      assert.match(d.fix, /no BIOS boot sector/);
      assert.doesNotMatch(d.fix, /no hard disk and no DVD/);
    },
  },
  {
    fixture: "uefi-no-disk-shell",
    facts: {},
    id: "uefi-shell-fallback",
    check: (d) => {
      assert.match(d.title, /UEFI fell back to its built-in shell/);
      assert.match(d.fix, /nothing to try before the shell/);
      assert.match(d.fix, /vmhost dvd set vm1 ISO/);
    },
  },
  {
    fixture: "uefi-blank-disk-shell",
    facts: DISK,
    id: "uefi-shell-fallback",
    check: (d) => {
      assert.match(d.fix, /Tried: Boot0001 "UEFI QEMU QEMU HARDDISK": Not Found\./);
      assert.match(d.fix, /EFI System Partition/);
      assert.ok(d.evidence.some((l) => l.includes("failed to load Boot0001")));
    },
  },
  {
    fixture: "uefi-pxe-no-disk",
    facts: { nics: 1 },
    id: "uefi-shell-fallback",
    check: (d) => {
      for (const e of ['Boot0001 "UEFI PXEv4 (MAC:00155D000001)": Not Found', 'Boot0002 "UEFI PXEv6', 'Boot0003 "UEFI HTTPv4', 'Boot0004 "UEFI HTTPv6']) {
        assert.ok(d.fix.includes(e), `${e} in ${d.fix}`);
      }
    },
  },
  {
    fixture: "uefi-secureboot-no-disk",
    facts: SB,
    // The built-in shell is always refused under Secure Boot: no disk is the failure, not Secure Boot.
    id: "uefi-no-bootable-device",
    check: (d) => {
      assert.match(d.fix, /Tried: Boot0001 "EFI Internal Shell": Security Violation\./);
      assert.match(d.fix, /Secure Boot is on \(MicrosoftUEFICertificateAuthority template\)/);
    },
  },
  {
    fixture: "uefi-secureboot-unsigned",
    facts: { ...SB, ...DISK },
    id: "secure-boot-refused",
    check: (d) => {
      assert.equal(d.title, 'Secure Boot refused to start Boot0001 "UEFI QEMU QEMU HARDDISK" (Access Denied)');
      assert.match(d.fix, /Secure Boot is on with the MicrosoftUEFICertificateAuthority template/);
      // Made when the refusal is printed: the shell tried afterwards and "No bootable option" do not replace it.
      assert.ok(d.evidence.at(-1)!.endsWith("Access Denied"));
    },
  },
  {
    fixture: "uefi-secureboot-windows-template",
    facts: { ...SB, ...DISK, secureBootTemplate: "MicrosoftWindows" },
    id: "secure-boot-refused",
    check: (d) => {
      assert.equal(d.title, 'Secure Boot refused to start Boot0000 "UEFI QEMU QEMU HARDDISK" (Access Denied)');
      assert.match(d.fix, /Secure Boot is on with the MicrosoftWindows template, which trusts only Windows boot loaders/);
    },
  },
  {
    fixture: "linux-ioapic-timer",
    facts: GEN1,
    id: "no-usable-timer",
    check: (d) => {
      assert.match(d.fix, /no_timer_check/);
      assert.ok(d.evidence.some((l) => l.includes("8254 timer not connected") || l.includes("ExtINT")), d.evidence.join("\n"));
    },
  },
  {
    fixture: "linux-vfs-no-root",
    facts: GEN1,
    id: "linux-no-root-fs",
    check: (d) => {
      assert.match(d.fix, /ata_piix/);
      assert.ok(d.evidence.at(-1)!.includes("VFS: Unable to mount root fs on unknown-block(0,0)"));
    },
  },
  { fixture: "linux-init-exited", facts: GEN1, id: "linux-init-exited" },
  {
    fixture: "linux-sysrq-crash",
    facts: GEN1,
    id: "kernel-panic",
    check: (d) => assert.equal(d.title, "The guest kernel panicked: sysrq triggered crash"),
  },
  {
    fixture: "omnios-gen2-microfind",
    facts: { name: "omnios", cpus: 1 },
    id: "illumos-microfind-no-pit",
    check: (d) => {
      assert.match(d.fix, /Generation 2 VMs have no PIT/);
      assert.match(d.fix, /vmhost new omnios-gen1 --generation 1/);
      assert.match(d.fix, /vmhost set omnios --cpus 2/);
    },
  },
  { fixture: "appliance-gen1-ready", facts: { ...GEN1, ...DISK }, id: null },
  { fixture: "appliance-gen2-ready", facts: DISK, id: null },
  { fixture: "appliance-gen2-secureboot-ready", facts: { ...SB, ...DISK }, id: null },
  // A seed-000 hang is silent: no signature, the stall tests below diagnose it.
  { fixture: "omnios-gen1-configuring-devices", facts: GEN1, id: null },
];

describe("boot diagnostics: the catalogue on real console captures", () => {
  for (const c of CASES) {
    it(`${c.fixture} -> ${c.id ?? "no diagnosis"}`, async () => {
      const d = diagnose(await lines(c.fixture), facts(c.facts));
      assert.equal(d?.id ?? null, c.id, d ? `${d.title}\n${d.fix}` : "no diagnosis");
      if (d) {
        assert.ok(d.evidence.length > 0 && d.evidence.length <= 20);
        assert.doesNotMatch(`${d.title} ${d.explanation} ${d.fix}`, /\{[A-Za-z$][A-Za-z0-9]*\}/, "a placeholder was left");
        c.check?.(d);
      }
    });
  }

  it("every fixture in the folder is used, and every catalogue entry is matched on a fixture", async () => {
    const files = (await readdir(FIXTURES)).filter((f) => f.endsWith(".console.txt")).map((f) => f.slice(0, -".console.txt".length));
    assert.deepEqual([...files].sort(), [...new Set(CASES.map((c) => c.fixture))].sort());
    const covered = new Set(CASES.map((c) => c.id));
    for (const id of ["uefi-network-boot-no-disk", "illumos-configuring-devices-stall", "boot-stalled-after-loader", "boot-stalled"]) covered.add(id);
    for (const s of [...CATALOGUE.signatures, ...CATALOGUE.stalls]) assert.ok(covered.has(s.id), `no fixture for ${s.id}`);
  });

  it("the catalogue uses only known placeholders and every pattern compiles", () => {
    const known = new Set<string>(PLACEHOLDERS);
    const texts = [...CATALOGUE_DATA.signatures, ...CATALOGUE_DATA.stalls].flatMap((s) => [s.title, s.explanation, ...s.fix.map((f) => f.text)]);
    for (const t of texts) {
      for (const m of t.matchAll(/\{([A-Za-z]+)\}/g)) assert.ok(known.has(m[1]!), `unknown placeholder {${m[1]}} in "${t}"`);
    }
    assert.equal(compileCatalogue(CATALOGUE_DATA).signatures.length, CATALOGUE_DATA.signatures.length);
  });

  it("bad catalogue data is refused with the entry named", () => {
    const base = structuredClone(CATALOGUE_DATA);
    base.signatures[0]!.pattern = "microfind: (";
    assert.throws(() => compileCatalogue(base), /illumos-microfind-no-pit.*bad pattern/);
    const dup = structuredClone(CATALOGUE_DATA);
    dup.signatures.push({ ...dup.signatures[0]! });
    assert.throws(() => compileCatalogue(dup), /used twice/);
    const extra = structuredClone(CATALOGUE_DATA) as unknown as { signatures: Record<string, unknown>[] };
    extra.signatures[0]!["colour"] = "red";
    assert.throws(() => compileCatalogue(extra as never));
  });

  it("adding a signature is a data change: a new entry is matched with no code", () => {
    const data = structuredClone(CATALOGUE_DATA);
    data.signatures.push({
      id: "example-grub-rescue",
      pattern: "^grub rescue>",
      title: "GRUB dropped to its rescue shell",
      explanation: "GRUB could not find its modules or configuration.",
      fix: [{ text: "Reinstall GRUB on {name}'s disk {disk}." }],
    });
    const d = diagnose(["error: unknown filesystem.", "grub rescue>"], facts(DISK), compileCatalogue(data));
    assert.equal(d?.id, "example-grub-rescue");
    assert.equal(d?.fix, "Reinstall GRUB on vm1's disk /var/lib/vmhost/disks/vm1.qcow2.");
  });
});

describe("boot diagnostics: advice follows the VM's settings", () => {
  it("microfind: Generation 1 or 2, one or more processors", async () => {
    const l = await lines("omnios-gen2-microfind");
    const two = diagnose(l, facts({ cpus: 2 }))!;
    assert.match(two.fix, /Generation 2 VMs have no PIT/);
    assert.doesNotMatch(two.fix, /--cpus 2/);
    const g1 = diagnose(l, facts({ generation: 1, cpus: 1 }))!;
    assert.doesNotMatch(g1.fix, /Generation 2 VMs have no PIT/);
    assert.match(g1.fix, /has a PIT/);
    assert.match(g1.fix, /vmhost set vm1 --cpus 2/);
  });

  it("IO-APIC + timer: Generation 2 is told about the HPET, Generation 1 about no_timer_check", async () => {
    const l = await lines("linux-ioapic-timer");
    assert.match(diagnose(l, facts({ generation: 2 }))!.fix, /HPET.*Generation 1 VM \(it has a PIT\)/);
    assert.doesNotMatch(diagnose(l, facts(GEN1))!.fix, /HPET/);
  });

  it("Secure Boot refusal names the template in force", async () => {
    const l = await lines("uefi-secureboot-unsigned");
    const win = diagnose(l, facts({ ...SB, ...DISK, secureBootTemplate: "MicrosoftWindows" }))!;
    assert.match(win.fix, /MicrosoftWindows template, which trusts only Windows boot loaders.*needs the MicrosoftUEFICertificateAuthority template/);
    const shielded = diagnose(l, facts({ ...SB, ...DISK, secureBootTemplate: "OpenSourceShieldedVM" }))!;
    assert.match(shielded.fix, /OpenSourceShieldedVM template/);
    const off = diagnose(l, facts({ ...DISK, secureBoot: false }))!;
    assert.match(off.fix, /settings say Secure Boot is off .*nvram\.fd/);
  });

  it("VFS: the storage driver named is the generation's", async () => {
    const l = await lines("linux-vfs-no-root");
    assert.match(diagnose(l, facts({ generation: 2 }))!.fix, /virtio_scsi and sd_mod/);
  });

  it("network boot on a Gen2 VM without disk is diagnosed at once, and replaced by the final failure", async () => {
    const l = await lines("uefi-pxe-no-disk");
    const first = l.findIndex((x) => x.includes(">>Start PXE over IPv4"));
    const early = diagnose(l.slice(0, first + 1), facts({ nics: 1 }))!;
    assert.equal(early.id, "uefi-network-boot-no-disk");
    assert.match(early.title, /No boot disk: UEFI is trying network boot/);
    // With a disk attached the same lines are no diagnosis (the disk failed first, the final one follows).
    assert.equal(diagnose(l.slice(0, first + 1), facts({ nics: 1, ...DISK })), null);
    assert.equal(diagnose(l, facts({ nics: 1 }))!.id, "uefi-shell-fallback");
  });

  it("an unterminated line is matched too (OVMF ends '>>Start PXE over IPv4.' only when the attempt ends)", () => {
    const m = new BootMatcher(facts({ nics: 1 }));
    assert.deepEqual(m.line("BdsDxe: loading Boot0001 \"EFI Internal Shell\""), []);
    const c = m.partial(">>Start PXE over IPv4.");
    assert.equal(c[0]?.kind === "set" ? c[0].diagnosis.id : "", "uefi-network-boot-no-disk");
    assert.equal(m.diagnosis?.evidence.at(-1), ">>Start PXE over IPv4.");
    // The whole line when it comes is the same diagnosis, not a second one.
    assert.deepEqual(m.line(">>Start PXE over IPv4."), []);
    assert.deepEqual(m.partial(""), []);
  });

  it("a successful network boot withdraws the interim diagnosis", () => {
    const m = new BootMatcher(facts({ nics: 1 }));
    assert.equal(m.line(">>Start PXE over IPv4.")[0]?.kind, "set");
    const changes = m.line('BdsDxe: starting Boot0001 "UEFI PXEv4 (MAC:00155D000001)" from PciRoot(0x0)/Pci(0x2,0x0)/MAC(00155D000001,0x1)/IPv4(0.0.0.0)');
    assert.equal(changes[0]?.kind, "cleared");
    assert.equal(m.diagnosis, null);
  });

  it("the same failure repeated is one diagnosis; a weaker later match does not replace a stronger one", async () => {
    const m = new BootMatcher(facts(GEN1));
    const l = await lines("linux-vfs-no-root");
    const sets = l.flatMap((x) => m.line(x)).filter((c) => c.kind === "set");
    // The panic line and its "---[ end Kernel panic" echo: one diagnosis, the specific one.
    assert.deepEqual(sets.map((c) => (c.kind === "set" ? c.diagnosis.id : "")), ["linux-no-root-fs"]);
  });

  it("a guest that reaches a prompt after a failure (a reboot that worked) clears the diagnosis", () => {
    const m = new BootMatcher(facts(GEN1));
    m.line("Kernel panic - not syncing: sysrq triggered crash");
    assert.equal(m.diagnosis?.id, "kernel-panic");
    m.newBoot();
    const c = m.line("vmhost-appliance: ready");
    assert.equal(c[0]?.kind, "cleared");
    assert.equal(m.diagnosis, null);
  });
});

describe("boot diagnostics: stalls (fake clock)", () => {
  const at = new Date("2026-11-21T10:00:00Z");

  it("seed 000: OmniOS silent after 'Configuring devices.' with one vCPU is told to use two", async () => {
    const m = new BootMatcher(facts({ name: "omnios", generation: 1, cpus: 1 }), CATALOGUE, () => at);
    for (const l of await lines("omnios-gen1-configuring-devices")) m.line(l);
    assert.equal(m.stall(59, 60), undefined, "not before the threshold");
    const c = m.stall(61, 60);
    assert.equal(c?.kind, "set");
    const d = m.diagnosis!;
    assert.equal(d.id, "illumos-configuring-devices-stall");
    assert.equal(d.kind, "stall");
    assert.equal(d.title, "boot stalled after: Configuring devices.");
    assert.match(d.fix, /vmhost set omnios --cpus 2/);
    assert.equal(d.at, at.toISOString());
    assert.equal(d.evidence.at(-1), "Configuring devices.");
    assert.equal(m.stall(500, 60), undefined, "made once");
  });

  it("with two vCPUs the same stall gets other advice", async () => {
    const m = new BootMatcher(facts({ generation: 1, cpus: 2 }));
    for (const l of await lines("omnios-gen1-configuring-devices")) m.line(l);
    m.stall(100, 60);
    assert.match(m.diagnosis!.fix, /already has 2 virtual processors/);
  });

  it("a generic stall names the last line; output withdraws it", () => {
    const m = new BootMatcher(facts(GEN1));
    m.line("SeaBIOS (version 1.16.2-debian-1.16.2-1)");
    m.line("Loading driver xyz");
    m.stall(91, 90);
    assert.equal(m.diagnosis?.id, "boot-stalled");
    assert.equal(m.diagnosis?.title, "boot stalled after: Loading driver xyz");
    assert.match(m.diagnosis!.fix, /--cpus 2/);
    const c = m.line("xyz: ready");
    assert.equal(c[0]?.kind, "cleared");
    assert.equal(m.diagnosis, null);
    // Output that is not a whole line yet (the quiet time dropped) withdraws it as well.
    const again = m.stall(95, 90);
    assert.equal(again?.kind === "set" ? again.diagnosis.id : "", "boot-stalled");
    assert.equal(m.stall(1, 90)?.kind, "cleared");
  });

  it("UEFI handing over to a loader that prints nothing is told so", async () => {
    const l = await lines("appliance-gen2-ready");
    const m = new BootMatcher(facts(DISK));
    for (const x of l.slice(0, l.findIndex((y) => y.startsWith("BdsDxe: starting")) + 1)) m.line(x);
    m.stall(120, 90);
    assert.equal(m.diagnosis?.id, "boot-stalled-after-loader");
    assert.match(m.diagnosis!.fix, /console=ttyS0/);
  });

  it("no stall: at a prompt, after the ready line, when the agent answers, with nothing printed, or when turned off", async () => {
    const ready = new BootMatcher(facts(GEN1));
    for (const l of await lines("appliance-gen1-ready")) ready.line(l);
    assert.equal(ready.stall(10_000, 60, "appliance:~# "), undefined);
    assert.equal(ready.diagnosis, null);

    const login = new BootMatcher(facts(GEN1));
    login.line("Debian GNU/Linux 12 web ttyS0");
    assert.equal(login.stall(10_000, 60, "web login: "), undefined);
    assert.equal(login.guestUp, true);

    const agent = new BootMatcher(facts(GEN1));
    agent.line("BdsDxe: starting Boot0001 \"Windows Boot Manager\" from HD(1,GPT,...)");
    agent.markUp();
    assert.equal(agent.stall(10_000, 60), undefined);

    assert.equal(new BootMatcher(facts()).stall(10_000, 60), undefined, "a boot that printed nothing yet (or a restored VM)");

    const off = new BootMatcher(facts());
    off.line("Configuring devices.");
    assert.equal(off.stall(10_000, 0), undefined);

    const restored = new BootMatcher(facts());
    restored.notFromStart();
    restored.line("random: crng init done");
    assert.equal(restored.stall(10_000, 60), undefined, "a restored or adopted guest is not booting");

    const reset = new BootMatcher(facts());
    reset.notFromStart();
    reset.line("vmhost-appliance: ready");
    reset.newBoot();
    reset.line("Loading, please wait...");
    assert.equal(reset.stall(100, 60)?.kind, "set", "after a reset the guest is not up until it says so again");
  });

  it("a failure is never replaced by a stall", async () => {
    const m = new BootMatcher(facts());
    for (const l of await lines("uefi-secureboot-no-disk")) m.line(l);
    assert.equal(m.stall(10_000, 60), undefined);
    assert.equal(m.diagnosis?.id, "uefi-no-bootable-device");
  });

  it("VMHOST_STALL_SECONDS", () => {
    assert.equal(stallSecondsFromEnv({}), 90);
    assert.equal(stallSecondsFromEnv({ VMHOST_STALL_SECONDS: "30" }), 30);
    assert.equal(stallSecondsFromEnv({ VMHOST_STALL_SECONDS: "0" }), 0);
    assert.equal(stallSecondsFromEnv({ VMHOST_STALL_SECONDS: "soon" }), 90);
  });
});

/** The supervisor's side, faked: its events and the few calls the watcher makes. */
class FakeHost extends EventEmitter<SupervisorEvents> implements DiagnosticsHost {
  quiet = 0;
  pending = "";
  state: VmState = "Running";
  events: { type: string; message: string; data?: Record<string, unknown> }[] = [];
  constructor(readonly dir: string) {
    super();
  }
  home(vm: { id: string }) {
    return new VmHome(this.dir, join(this.dir, "run"), join(this.dir, "disks"), vm.id);
  }
  async event(_vm: VmRef, type: string, message: string, data?: Record<string, unknown>): Promise<void> {
    this.events.push({ type, message, ...(data ? { data } : {}) });
  }
  stateOf(): VmState {
    return this.state;
  }
  consoleQuietSeconds(): number {
    return this.quiet;
  }
  consolePending(): string {
    return this.pending;
  }
}

/** The seed-000 guest: OmniOS as a 1-vCPU Gen1 VM. */
function vmConfig(over: Partial<VmConfig> = {}): VmConfig {
  const name = over.name ?? "omnios";
  // One id per name, so a VM given again by name is the same VM.
  const hex = Buffer.from(name.padEnd(12, "_").slice(0, 12)).toString("hex").slice(0, 12);
  return sampleVm({ name, id: `00000000-0000-4000-8000-${hex}`, generation: 1, memoryMiB: 2048, ...over });
}

describe("boot diagnostics: the per-VM watcher", () => {
  it("feeds console lines, diagnoses a stall on its tick, journals it, keeps it in diagnosis.json, and a new start clears it", async () => {
    const home = await mkdtemp(join(tmpdir(), "vmhost-diag-"));
    try {
      const host = new FakeHost(home);
      const vm = vmConfig();
      const files = host.home(vm);
      await import("node:fs/promises").then((fs) => fs.mkdir(files.dir, { recursive: true }));
      await writeFile(files.runtime, JSON.stringify({ pid: 1, startTime: 1, startedAt: "2026-11-21T10:00:00.000Z", runDir: "/run/x", accel: "tcg" }));
      const diag = new BootDiagnostics(host, { stallSeconds: 60, tickMs: 3_600_000, now: () => new Date("2026-11-21T10:05:00Z") });
      host.emit("attached", vm, new RunPaths("/run/x"));
      for (const l of await lines("omnios-gen1-configuring-devices")) host.emit("console-line", vm, l);
      host.quiet = 30;
      diag.tick();
      assert.equal(diag.current(vm.id), null);
      host.quiet = 61;
      diag.tick();
      await diag.settled(vm.id);
      const rec = await readDiagnosisRecord(files.diagnosis);
      assert.equal(rec?.startedAt, "2026-11-21T10:00:00.000Z");
      assert.equal(rec?.diagnosis?.id, "illumos-configuring-devices-stall");
      assert.equal(host.events.length, 1);
      assert.equal(host.events[0]!.type, "diagnosis");
      assert.match(host.events[0]!.message, /boot stalled after: Configuring devices\..*vmhost set omnios --cpus 2/);

      // The VM goes off: the diagnosis stays for `show`.
      host.emit("detached", vm);
      assert.equal((await readDiagnosis(files.diagnosis))?.id, "illumos-configuring-devices-stall");

      // A restarted service adopts the same run: the diagnosis is kept, not made again.
      diag.close();
      const adopted = new BootDiagnostics(host, { stallSeconds: 60, tickMs: 3_600_000 });
      host.emit("attached", vm, new RunPaths("/run/x"));
      await adopted.settled(vm.id);
      assert.equal(adopted.current(vm.id)?.id, "illumos-configuring-devices-stall");
      host.emit("detached", vm);

      // The next start (a new startedAt) clears it; with two vCPUs the boot goes on.
      await writeFile(files.runtime, JSON.stringify({ pid: 2, startTime: 2, startedAt: "2026-11-21T11:00:00.000Z", runDir: "/run/x", accel: "tcg" }));
      host.emit("attached", vmConfig({ processorCount: 2 }), new RunPaths("/run/x"));
      await adopted.settled(vm.id);
      assert.equal(await readDiagnosis(files.diagnosis), null);
      host.emit("console-line", vm, "Configuring devices.");
      host.emit("console-line", vm, "Hostname: omnios");
      host.pending = "omnios console login: ";
      host.quiet = 1000;
      adopted.tick();
      await adopted.settled(vm.id);
      assert.equal(await readDiagnosis(files.diagnosis), null);
      adopted.close();
    } finally {
      await rm(home, { recursive: true, force: true });
    }
  });

  it("a signature on the console is journaled with its evidence; a paused VM is not checked for stalls", async () => {
    const home = await mkdtemp(join(tmpdir(), "vmhost-diag-"));
    try {
      const host = new FakeHost(home);
      const vm = vmConfig({ name: "g2", generation: 2 });
      await import("node:fs/promises").then((fs) => fs.mkdir(host.home(vm).dir, { recursive: true }));
      const diag = new BootDiagnostics(host, { stallSeconds: 60, tickMs: 3_600_000 });
      host.emit("attached", vm, new RunPaths("/run/y"));
      for (const l of await lines("uefi-secureboot-unsigned")) host.emit("console-line", vm, l);
      await diag.settled(vm.id);
      const d = await readDiagnosis(host.home(vm).diagnosis);
      assert.equal(d?.id, "secure-boot-refused");
      const ev = host.events.filter((e) => e.type === "diagnosis");
      assert.equal(ev.length, 1);
      assert.ok((ev[0]!.data?.["evidence"] as string[]).some((l) => l.includes("Access Denied")));

      // An unterminated line is looked at on the tick.
      const pxe = vmConfig({ name: "pxe", generation: 2 });
      host.emit("attached", pxe, new RunPaths("/run/p"));
      host.pending = ">>Start PXE over IPv4.";
      diag.tick();
      await diag.settled(pxe.id);
      assert.equal(diag.current(pxe.id)?.id, "uefi-network-boot-no-disk");
      host.pending = "";
      host.emit("detached", pxe);

      // A VM restored from saved state (or adopted) was not watched from its boot: no stall.
      const restored = vmConfig({ name: "restored", generation: 1 });
      host.emit("attached", restored, new RunPaths("/run/r"));
      host.emit("vm-event", { at: "", vmId: restored.id, vm: "restored", type: "restored", message: "saved state restored" });
      host.emit("console-line", restored, "random: crng init done");
      host.quiet = 1000;
      diag.tick();
      assert.equal(diag.current(restored.id), null);
      host.emit("qmp-event", restored, { event: "RESET", data: { guest: true } });
      host.emit("console-line", restored, "Loading, please wait...");
      diag.tick();
      assert.equal(diag.current(restored.id)?.id, "boot-stalled");
      host.quiet = 0;

      const other = vmConfig({ name: "paused", generation: 1 });
      host.emit("attached", other, new RunPaths("/run/z"));
      host.emit("console-line", other, "Loading...");
      host.state = "Paused";
      host.quiet = 1000;
      diag.tick();
      assert.equal(diag.current(other.id), null);
      diag.close();
    } finally {
      await rm(home, { recursive: true, force: true });
    }
  });

  it("a damaged diagnosis.json is reported by name", async () => {
    const dir = await mkdtemp(join(tmpdir(), "vmhost-diag-"));
    try {
      await writeFile(join(dir, "diagnosis.json"), "{ torn");
      const d = await readDiagnosis(join(dir, "diagnosis.json"));
      assert.equal(d?.id, "diagnosis-record-damaged");
      assert.ok(d?.title.includes(join(dir, "diagnosis.json")));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("boot diagnostics: what puts firmware messages on the console", () => {
  it("a Gen1 VM's SeaBIOS prints on the serial console (fw_cfg etc/sercon-port), so 'No bootable device.' reaches the catalogue", () => {
    const paths = { qmpSocket: "/r/q", serialSocket: "/r/s", consoleLog: "/v/console.log", agentSocket: "/r/a", pidFile: "/r/p" };
    const gen1 = buildArgv(sampleVm({ generation: 1 }), { ...paths, biosSerialConsole: "/r/sercon-port" }, { accel: "tcg" });
    const i = gen1.indexOf("name=etc/sercon-port,file=/r/sercon-port");
    assert.ok(i > 0 && gen1[i - 1] === "-fw_cfg", gen1.join(" "));
    const gen2 = buildArgv(sampleVm(), { ...paths, nvram: "/v/nvram.fd" }, { accel: "tcg", uefiCode: "/usr/share/OVMF/OVMF_CODE_4M.fd" });
    assert.ok(!gen2.some((a) => a.includes("sercon")));
  });

  it("SeaBIOS's reset escape (ESC c) is removed with the others", () => {
    assert.deepEqual(cleanConsoleLines("\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2-debian-1.16.2-1)\r\n"), ["SeaBIOS (version 1.16.2-debian-1.16.2-1)"]);
  });
});
