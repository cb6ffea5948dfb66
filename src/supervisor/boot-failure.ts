import type { Supervisor, VmRef } from "./supervisor.js";
import type { VmConfig } from "../model/schema.js";

/**
 * Hyper-V's PauseAfterBootFailure: UEFI goes through failing boot entries too fast to read,
 * so the VM is paused after each failed attempt and `resume` lets the firmware go on to the
 * next entry. OVMF reports every attempt on its console (BdsDxe, 2022.11):
 *   BdsDxe: failed to load Boot0001 "UEFI QEMU QEMU HARDDISK " from PciRoot(0x0)/...: Access Denied
 *   BdsDxe: failed to start Boot0002 "EFI Internal Shell" from Fv(...)/FvFile(...): Security Violation
 * The supervisor emits each console line as it is written (inotify on the log QEMU appends
 * to), and the VM is stopped over QMP a few milliseconds after the line: the firmware has by
 * then at most begun the next entry, which goes on when the VM is resumed.
 */
export interface BootFailure {
  at: string;
  /** "Boot0001" */
  entry: string;
  description: string;
  firmwarePath: string;
  /** The firmware could not load the image (not found, Access Denied) or it returned an error when started. */
  phase: "load" | "start";
  reason: string;
  /** True when the VM was paused for it (PauseAfterBootFailure on). */
  paused: boolean;
}

const FAILURE = /BdsDxe: failed to (load|start) (Boot[0-9A-F]{4}) "(.*)" from (.*): ([^:]+)$/;

export function parseBootFailure(line: string, at = new Date()): Omit<BootFailure, "paused"> | null {
  const m = FAILURE.exec(line.trim());
  if (!m) return null;
  return { at: at.toISOString(), phase: m[1] as "load" | "start", entry: m[2]!, description: m[3]!, firmwarePath: m[4]!, reason: m[5]!.trim() };
}

export interface BootFailureHooks {
  /** The VM's configuration, when it still exists. */
  config(vmId: string): Promise<VmConfig | undefined>;
  /** Records the failure (the VM is already paused when `paused`). */
  record(vm: VmRef, failure: BootFailure): Promise<void>;
}

/** Watches every supervised VM's console for failed boot attempts. */
export class BootFailureWatch {
  private readonly listener = (vm: VmRef, line: string): void => {
    if (!line.includes("BdsDxe: failed to")) return;
    const failure = parseBootFailure(line);
    if (failure) void this.onFailure(vm, failure);
  };

  constructor(
    private readonly supervisor: Supervisor,
    private readonly hooks: BootFailureHooks,
  ) {
    supervisor.on("console-line", this.listener);
  }

  close(): void {
    this.supervisor.off("console-line", this.listener);
  }

  private async onFailure(ref: VmRef, failure: Omit<BootFailure, "paused">): Promise<void> {
    const vm = await this.hooks.config(ref.id).catch(() => undefined);
    if (!vm) return;
    let paused = false;
    if (vm.generation === 2 && vm.firmware.pauseAfterBootFailure && this.supervisor.stateOf(vm) === "Running") {
      // QMP `stop` directly (not under the VM's lock): a start still holding it must not delay the pause.
      const mon = this.supervisor.monitorOf(vm);
      paused = await (mon?.stop().then(() => true, () => false) ?? Promise.resolve(false));
    }
    await this.hooks.record(ref, { ...failure, paused }).catch(() => undefined);
  }
}
