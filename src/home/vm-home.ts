import { join } from "node:path";

/**
 * Every file and socket one VM has, named in this one place (nothing else joins these names).
 *
 * A VM's folder is `<vms>/<id>` (its GUID), so a name is only a property: renaming never moves a
 * file, and nothing derived from a name reaches a path. Its sockets live in a private run
 * directory, `<run>/<first 13 characters of the id>` (socket paths must stay under 107 bytes).
 *
 * Files (all in the VM's folder):
 * - `vm.json`               the configuration (model/schema.ts)
 * - `nvram.fd`              Gen2: the VM's own UEFI variable store (OVMF's VARS)
 * - `firmware-pending.json` NVRAM changes kept while QEMU owns the store
 * - `console.log` (+`.1`)   the serial console as QEMU wrote it
 * - `qemu.log`              QEMU's own stdout/stderr of the last run
 * - `events.jsonl` (+`.1`)  the event journal
 * - `diagnosis.json`        boot diagnostics of the last run
 * - `boot-failure.json`     the last UEFI boot failure (PauseAfterBootFailure)
 * - `runtime.json`          the running QEMU (pid, start time, run directory), for adoption
 * - `status.json`           how the VM last stopped
 * - `saved-state.bin`       Save-VM's machine state (`.partial` while being written)
 * - `checkpoints/`          checkpoints (one folder each, by checkpoint id) and the tree
 * - `.txn/`                 an open multi-file change (txn.ts)
 *
 * Checkpoint disk images (the frozen images and the current overlays) are in
 * `<disks>/<id>.checkpoints/`, beside the VM's other disks, because they outlive the VM when it
 * is removed without --delete-disks (its current disk is an overlay on them).
 */
export class VmHome {
  readonly dir: string;
  readonly runDir: string;

  /** Checkpoint disk images (kept when the VM is removed without --delete-disks, so they live beside the other disks). */
  readonly checkpointDisksDir: string;

  constructor(
    vmsDir: string,
    runRoot: string,
    disksDir: string,
    readonly id: string,
  ) {
    this.dir = join(vmsDir, id);
    this.runDir = join(runRoot, id.slice(0, 13));
    this.checkpointDisksDir = join(disksDir, `${id}.checkpoints`);
  }

  get config(): string {
    return join(this.dir, "vm.json");
  }
  get nvram(): string {
    return join(this.dir, "nvram.fd");
  }
  get firmwarePending(): string {
    return join(this.dir, "firmware-pending.json");
  }
  get consoleLog(): string {
    return join(this.dir, "console.log");
  }
  get qemuLog(): string {
    return join(this.dir, "qemu.log");
  }
  get events(): string {
    return join(this.dir, "events.jsonl");
  }
  get diagnosis(): string {
    return join(this.dir, "diagnosis.json");
  }
  get bootFailure(): string {
    return join(this.dir, "boot-failure.json");
  }
  get runtime(): string {
    return join(this.dir, "runtime.json");
  }
  get status(): string {
    return join(this.dir, "status.json");
  }
  get savedState(): string {
    return join(this.dir, "saved-state.bin");
  }
  get savedStatePartial(): string {
    return join(this.dir, "saved-state.bin.partial");
  }
  get checkpointsDir(): string {
    return join(this.dir, "checkpoints");
  }
  /** The checkpoint tree (checkpoints/tree.json). */
  get checkpointTree(): string {
    return join(this.checkpointsDir, "tree.json");
  }
  /** A checkpoint removal (merge) in progress: its plan, so a restarted service finishes it. */
  get checkpointRemoval(): string {
    return join(this.checkpointsDir, "removal.json");
  }
  /** One checkpoint's folder: its NVRAM copy, configuration, memory state. */
  checkpointDir(checkpointId: string): string {
    return join(this.checkpointsDir, checkpointId);
  }
  get txnDir(): string {
    return join(this.dir, ".txn");
  }
  /** A live migration into this host is under way (Move-VM's destination side): its record. */
  get incomingMigration(): string {
    return join(this.dir, "incoming-migration.json");
  }
  /** The destination's TLS credentials of a migration under way (QEMU reads them; deleted after). */
  get migrationTlsDir(): string {
    return join(this.dir, "migration-tls");
  }

  /** The sockets and files of a QEMU started now (its run directory is `runDir`). */
  get run(): RunPaths {
    return new RunPaths(this.runDir);
  }
}

/**
 * The sockets and files of one running QEMU, in its private run directory. A QEMU adopted
 * after a restart keeps the run directory it was started with (recorded in runtime.json), so
 * these are built from that directory, not recomputed.
 */
export class RunPaths {
  constructor(readonly dir: string) {}

  get qmpSocket(): string {
    return join(this.dir, "qmp.sock");
  }
  get serialSocket(): string {
    return join(this.dir, "serial.sock");
  }
  get agentSocket(): string {
    return join(this.dir, "agent.sock");
  }
  /** Graphical console (QEMU's VNC server on a unix socket), for VMs with a display. */
  get vncSocket(): string {
    return join(this.dir, "vnc.sock");
  }
  get pidFile(): string {
    return join(this.dir, "qemu.pid");
  }
  /** Where QEMU streams its migration (Save-VM, checkpoints) to vmhostd. */
  get migrationSocket(): string {
    return join(this.dir, "migrate.sock");
  }
  /** Where vmhostd streams a saved state back into QEMU. */
  get incomingSocket(): string {
    return join(this.dir, "incoming.sock");
  }
  /** Gen1: the serial port's I/O address for SeaBIOS's fw_cfg etc/sercon-port. */
  get biosSerialConsole(): string {
    return join(this.dir, "sercon-port");
  }
}
