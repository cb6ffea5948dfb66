// Boots the built-in appliance's disks with plain QEMU under TCG and checks what the guest
// prints on its serial console and answers on the guest agent and QMP sockets.
// QEMU runs one VM at a time here (the host has 2 cores).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { copyFile, mkdtemp, rm } from "node:fs/promises";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureAppliance, type Appliance } from "../../src/images/appliance/index.js";

const BOOT_TIMEOUT_MS = 180_000;
const CMD_TIMEOUT_MS = 30_000;

/** A QEMU process whose serial console is its stdio. */
class SerialVm {
  readonly proc: ChildProcessWithoutNullStreams;
  readonly started = Date.now();
  private out = "";
  private stderr = "";
  private waiters = new Set<() => void>();
  readonly exited: Promise<number | null>;
  private exitCode: number | null | undefined;

  constructor(args: string[]) {
    this.proc = spawn("qemu-system-x86_64", args, { stdio: ["pipe", "pipe", "pipe"] });
    this.proc.stdout.on("data", (b: Buffer) => {
      this.out += b.toString("latin1").replace(/\r/g, "");
      this.wake();
    });
    this.proc.stderr.on("data", (b: Buffer) => (this.stderr += b.toString()));
    this.exited = new Promise((res) =>
      this.proc.on("exit", (code) => {
        this.exitCode = code;
        this.wake();
        res(code);
      }),
    );
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }

  get output(): string {
    return this.out;
  }

  get mark(): number {
    return this.out.length;
  }

  /** Seconds since QEMU was started. */
  elapsed(): number {
    return (Date.now() - this.started) / 1000;
  }

  tail(): string {
    return `--- serial (last 3000 chars) ---\n${this.out.slice(-3000)}\n--- qemu stderr ---\n${this.stderr}`;
  }

  /** Waits until `re` matches the output after `from`; resolves with the match. */
  waitFor(re: RegExp, timeoutMs: number, from = 0): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        const m = re.exec(this.out.slice(from));
        if (m) {
          done();
          resolve(m);
          return true;
        }
        if (this.exitCode !== undefined) {
          done();
          reject(new Error(`QEMU exited (${this.exitCode}) before ${re} appeared\n${this.tail()}`));
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${re}\n${this.tail()}`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      if (!check()) this.waiters.add(check);
    });
  }

  /** Types a command line on the console and waits for its output to match `expect`. */
  async command(line: string, expect: RegExp, timeoutMs = CMD_TIMEOUT_MS): Promise<string> {
    const from = this.mark;
    this.proc.stdin.write(line + "\n");
    await this.waitFor(expect, timeoutMs, from);
    return this.out.slice(from);
  }

  async stop(): Promise<void> {
    if (this.exitCode === undefined) {
      this.proc.kill("SIGTERM");
      const t = setTimeout(() => this.proc.kill("SIGKILL"), 5000);
      await this.exited;
      clearTimeout(t);
    }
  }
}

/** One newline-delimited JSON exchange partner on a unix socket (QMP or the guest agent). */
class JsonSocket {
  private buf = "";
  private messages: unknown[] = [];
  private waiters = new Set<() => void>();
  private closed = false;

  private constructor(private readonly sock: ReturnType<typeof createConnection>) {
    sock.on("data", (b: Buffer) => {
      this.buf += b.toString("utf8");
      let i: number;
      while ((i = this.buf.indexOf("\n")) >= 0) {
        const line = this.buf.slice(0, i).trim();
        this.buf = this.buf.slice(i + 1);
        if (!line) continue;
        try {
          this.messages.push(JSON.parse(line));
        } catch {
          // the guest agent may emit garbage after a reconnect; guest-sync resynchronises
        }
      }
      for (const w of [...this.waiters]) w();
    });
    sock.on("close", () => {
      this.closed = true;
      for (const w of [...this.waiters]) w();
    });
    sock.on("error", () => undefined);
  }

  static connect(path: string, timeoutMs = 5000): Promise<JsonSocket> {
    return new Promise((resolve, reject) => {
      const s = createConnection(path);
      const t = setTimeout(() => {
        s.destroy();
        reject(new Error(`connect ${path}: timeout`));
      }, timeoutMs);
      s.once("connect", () => {
        clearTimeout(t);
        resolve(new JsonSocket(s));
      });
      s.once("error", (e) => {
        clearTimeout(t);
        reject(e);
      });
    });
  }

  send(msg: unknown): void {
    this.sock.write(JSON.stringify(msg) + "\n");
  }

  /** Resolves with the first message (received so far or later) that satisfies `pred`. */
  next(pred: (m: Record<string, unknown>) => boolean, timeoutMs: number): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        const idx = this.messages.findIndex((m) => typeof m === "object" && m !== null && pred(m as Record<string, unknown>));
        if (idx >= 0) {
          const [m] = this.messages.splice(idx, 1);
          done();
          resolve(m as Record<string, unknown>);
          return true;
        }
        if (this.closed) {
          done();
          reject(new Error("socket closed"));
          return true;
        }
        return false;
      };
      const t = setTimeout(() => {
        done();
        reject(new Error(`no matching message within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(t);
        this.waiters.delete(check);
      };
      if (!check()) this.waiters.add(check);
    });
  }

  close(): void {
    this.sock.destroy();
  }
}

/** `p`, or a rejection after `ms` (the timer is cleared either way so it cannot hold the process open). */
async function within<T>(p: Promise<T>, ms: number, message: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, rej) => (timer = setTimeout(() => rej(new Error(message())), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** guest-sync until the agent answers (it starts right before the ready line). */
async function guestSync(path: string, deadlineMs: number): Promise<{ id: number; reply: Record<string, unknown> }> {
  const deadline = Date.now() + deadlineMs;
  let id = 4242;
  let lastError: unknown;
  while (Date.now() < deadline) {
    let s: JsonSocket | undefined;
    try {
      s = await JsonSocket.connect(path);
      id += 1;
      s.send({ execute: "guest-sync", arguments: { id } });
      const reply = await s.next((m) => m.return === id, 3000);
      return { id, reply };
    } catch (e) {
      lastError = e;
    } finally {
      s?.close();
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`guest agent did not answer guest-sync: ${String(lastError)}`);
}

let appliance: Appliance;
let work: string;

before(
  async () => {
    const t0 = Date.now();
    appliance = await ensureAppliance({ log: (l) => console.log(`# appliance: ${l}`) });
    console.log(`# appliance ${appliance.manifest.id} (kernel ${appliance.manifest.kernel.package} ${appliance.manifest.kernel.version}) ready after ${Date.now() - t0} ms`);
    work = await mkdtemp(join(tmpdir(), "vmhost-appliance-boot-"));
  },
  { timeout: 20 * 60_000 },
);

after(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

describe("appliance boot (TCG)", { concurrency: false }, () => {
  test("Gen1: SeaBIOS + IDE + SYSLINUX boots to a shell, e1000 gets a DHCP address", { timeout: BOOT_TIMEOUT_MS + 60_000 }, async (t) => {
    const disk = join(work, "gen1.raw");
    await copyFile(appliance.gen1Disk, disk); // never boot the cached image read-write
    const vm = new SerialVm([
      "-machine", "pc", "-accel", "tcg", "-m", "512", "-nodefaults", "-display", "none", "-serial", "stdio",
      "-drive", `if=none,id=d0,format=raw,file=${disk}`, "-device", "ide-hd,drive=d0,bus=ide.0,unit=0",
      "-device", "e1000,netdev=n0", "-netdev", "user,id=n0",
    ]);
    try {
      await vm.waitFor(/SYSLINUX/, BOOT_TIMEOUT_MS);
      await vm.waitFor(/^vmhost-appliance: ready$/m, BOOT_TIMEOUT_MS);
      const readyAt = vm.elapsed();
      t.diagnostic(`Gen1 ready line after ${readyAt.toFixed(2)} s`);
      assert.match(vm.output, /^vmhost-appliance: booted via BIOS$/m);
      assert.doesNotMatch(vm.output, /could not load/);
      await vm.waitFor(/# /, CMD_TIMEOUT_MS); // shell prompt

      await vm.command("echo vmhost-$((6*7))", /vmhost-42/);
      const ip = await vm.command(
        "for i in $(seq 1 150); do ip -4 addr show dev eth0 | grep -q 'inet ' && break; sleep 0.2; done; ip -4 addr show dev eth0; echo IP-$((40+2))",
        /IP-42/,
        60_000,
      );
      assert.match(ip, /inet 10\.0\.2\.15\/24/);
      const drv = await vm.command("basename $(readlink /sys/class/net/eth0/device/driver); echo DRV-$((40+2))", /DRV-42/);
      assert.match(drv, /^e1000$/m);
    } finally {
      await vm.stop();
    }
  });

  test("Gen2: OVMF + virtio-scsi + shim/GRUB boots; efibootmgr, guest agent and ACPI power button work", { timeout: BOOT_TIMEOUT_MS + 120_000 }, async (t) => {
    const disk = join(work, "gen2.raw");
    const vars = join(work, "gen2-vars.fd");
    const qga = join(work, "qga.sock");
    const qmp = join(work, "qmp.sock");
    await copyFile(appliance.gen2Disk, disk);
    await copyFile("/usr/share/OVMF/OVMF_VARS_4M.fd", vars);
    const vm = new SerialVm([
      "-machine", "q35,pit=off", "-accel", "tcg", "-m", "512", "-nodefaults", "-display", "none", "-serial", "stdio",
      "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
      "-drive", `if=pflash,format=raw,unit=1,file=${vars}`,
      "-device", "virtio-scsi-pci,id=scsi0",
      "-drive", `if=none,id=d0,format=raw,file=${disk}`, "-device", "scsi-hd,drive=d0,bus=scsi0.0",
      "-device", "virtio-net-pci,netdev=n0,romfile=", "-netdev", "user,id=n0",
      "-device", "virtio-serial-pci",
      "-chardev", `socket,id=qga0,path=${qga},server=on,wait=off`,
      "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
      "-qmp", `unix:${qmp},server=on,wait=off`,
    ]);
    try {
      await vm.waitFor(/^vmhost-appliance: ready$/m, BOOT_TIMEOUT_MS);
      t.diagnostic(`Gen2 ready line after ${vm.elapsed().toFixed(2)} s`);
      assert.match(vm.output, /^vmhost-appliance: booted via UEFI$/m);
      assert.match(vm.output, /GRUB is loading the kernel/);
      assert.doesNotMatch(vm.output, /could not load/);
      await vm.waitFor(/# /, CMD_TIMEOUT_MS);

      const efi = await vm.command("efibootmgr; echo EFI-$((40+2))", /EFI-42/);
      assert.match(efi, /^BootOrder: [0-9A-F]{4}(,[0-9A-F]{4})*$/m);
      assert.match(efi, /^BootCurrent: [0-9A-F]{4}$/m);

      // modules.dep: modprobe reloads vfat with its dependencies; the ESP mounts as an installer would see it.
      const esp = await vm.command(
        "rmmod vfat && modprobe vfat && mount -t vfat -o ro /dev/sda1 /mnt && ls /mnt/EFI/BOOT /mnt/EFI/debian; umount /mnt; echo ESP-$((40+2))",
        /ESP-42/,
      );
      assert.match(esp, /BOOTX64\.EFI/);
      assert.match(esp, /shimx64\.efi/);

      const sync = await guestSync(qga, 60_000);
      assert.deepEqual(sync.reply, { return: sync.id });
      t.diagnostic(`guest agent answered guest-sync at ${vm.elapsed().toFixed(2)} s`);

      const q = await JsonSocket.connect(qmp);
      try {
        await q.next((m) => "QMP" in m, 10_000);
        q.send({ execute: "qmp_capabilities" });
        await q.next((m) => "return" in m, 10_000);
        const pressedAt = Date.now();
        q.send({ execute: "system_powerdown" });
        await q.next((m) => "return" in m, 10_000);
        const code = await within(vm.exited, 60_000, () => `QEMU still running 60 s after system_powerdown\n${vm.tail()}`);
        t.diagnostic(`QEMU exited ${Date.now() - pressedAt} ms after system_powerdown`);
        assert.equal(code, 0);
        assert.match(vm.output, /power button pressed/);
      } finally {
        q.close();
      }
    } finally {
      await vm.stop();
    }
  });

  test("guest agent guest-shutdown powers the guest off through /sbin/shutdown", { timeout: BOOT_TIMEOUT_MS }, async () => {
    const qga = join(work, "qga-direct.sock");
    const vm = new SerialVm([
      "-machine", "q35", "-accel", "tcg", "-m", "512", "-nodefaults", "-display", "none", "-serial", "stdio",
      "-kernel", join(appliance.dir, appliance.manifest.vmlinuz),
      "-initrd", join(appliance.dir, appliance.manifest.initrd),
      "-append", appliance.manifest.cmdline,
      "-device", "virtio-serial-pci",
      "-chardev", `socket,id=qga0,path=${qga},server=on,wait=off`,
      "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
    ]);
    try {
      await vm.waitFor(/^vmhost-appliance: ready$/m, BOOT_TIMEOUT_MS);
      await guestSync(qga, 60_000);
      const s = await JsonSocket.connect(qga);
      try {
        s.send({ execute: "guest-get-osinfo" });
        const info = await s.next((m) => typeof m.return === "object", 10_000);
        const ret = info.return as Record<string, unknown>;
        assert.equal(ret.id, "vmhost-appliance");
        assert.equal(ret["kernel-release"], appliance.manifest.kernel.release);
        s.send({ execute: "guest-shutdown", arguments: { mode: "powerdown" } });
      } finally {
        s.close();
      }
      const code = await within(vm.exited, 60_000, () => `QEMU still running 60 s after guest-shutdown\n${vm.tail()}`);
      assert.equal(code, 0);
      assert.match(vm.output, /shutdown -h -P \+0 .* -> poweroff/);
    } finally {
      await vm.stop();
    }
  });
});
