import { z } from "zod";
import type { VmConfig } from "../../model/schema.js";

/**
 * When a signature or a piece of advice applies, in terms of the VM's settings. Every field
 * given must hold. `tried` looks at the entries the signature collected (e.g. boot entries).
 */
export const Conditions = z
  .object({
    generation: z.union([z.literal(1), z.literal(2)]).optional(),
    firmware: z.enum(["bios", "uefi"]).optional(),
    cpusAtMost: z.number().int().min(1).optional(),
    cpusAtLeast: z.number().int().min(1).optional(),
    secureBoot: z.boolean().optional(),
    /** Any of these Secure Boot templates. */
    template: z.array(z.string().min(1)).min(1).optional(),
    hasDisk: z.boolean().optional(),
    /** A DVD drive with media in it. */
    hasDvd: z.boolean().optional(),
    hasNic: z.boolean().optional(),
    tried: z.enum(["some", "none"]).optional(),
  })
  .strict();
export type Conditions = z.infer<typeof Conditions>;

/** One sentence or two of advice; every item whose `when` holds is shown, in order. */
export const Advice = z.object({ when: Conditions.optional(), text: z.string().min(1) }).strict();
export type Advice = z.infer<typeof Advice>;

/** A known failure, recognised by one console line. */
export const Signature = z
  .object({
    id: z.string().regex(/^[a-z0-9]+(-[a-z0-9]+)*$/),
    /** Regular expression (JavaScript source) tested against each console line, escapes removed. */
    pattern: z.string().min(1),
    flags: z.enum(["", "i"]).default(""),
    title: z.string().min(1),
    explanation: z.string().min(1),
    fix: z.array(Advice).min(1),
    /** When several signatures match in one boot the highest priority is shown (ties: the later). */
    priority: z.number().int().min(0).max(100).default(50),
    appliesTo: Conditions.optional(),
    /** Earlier lines of the same boot to keep as evidence and list as `{tried}` (e.g. boot entries that failed). */
    collect: z
      .object({
        pattern: z.string().min(1),
        /** How one collected line reads in `{tried}`: `{$1}`… are its groups, `{prev}` the line before it. */
        format: z.string().min(1).optional(),
        max: z.number().int().min(1).max(50).default(12),
      })
      .strict()
      .optional(),
    /** How many lines before the matching one are kept as evidence. */
    context: z.number().int().min(0).max(10).default(0),
    /** A later line matching this withdraws the diagnosis: the boot went on after all. */
    withdrawnBy: z.string().min(1).optional(),
  })
  .strict();
export type Signature = z.infer<typeof Signature>;

/** What a boot that went silent is told; the first rule that applies is used. */
export const StallRule = z
  .object({
    id: z.string().regex(/^[a-z0-9]+(-[a-z0-9]+)*$/),
    /** The last thing the console printed must match this. */
    lastLine: z.string().min(1).optional(),
    /** An earlier line of the same boot must match this. */
    seenBefore: z.string().min(1).optional(),
    title: z.string().min(1),
    explanation: z.string().min(1),
    fix: z.array(Advice).min(1),
    appliesTo: Conditions.optional(),
  })
  .strict();
export type StallRule = z.infer<typeof StallRule>;

/** A line that says the guest is up (a prompt, a ready line): a quiet console after it is not a stall. */
export const KnownGood = z.object({ pattern: z.string().min(1), what: z.string().min(1) }).strict();
export type KnownGood = z.infer<typeof KnownGood>;

export const Catalogue = z
  .object({
    signatures: z.array(Signature),
    stalls: z.array(StallRule).min(1),
    knownGood: z.array(KnownGood),
  })
  .strict();
export type Catalogue = z.infer<typeof Catalogue>;
export type CatalogueInput = z.input<typeof Catalogue>;

/** What the diagnosis of a VM is, as `show` prints it and diagnosis.json keeps it. */
export const Diagnosis = z
  .object({
    id: z.string(),
    kind: z.enum(["signature", "stall"]),
    title: z.string(),
    explanation: z.string(),
    fix: z.string(),
    /** When it was made (ISO time). */
    at: z.string(),
    /** The console lines it rests on, oldest first. */
    evidence: z.array(z.string()),
  })
  .strict();
export type Diagnosis = z.infer<typeof Diagnosis>;

/** The VM settings advice depends on. */
export interface VmFacts {
  name: string;
  generation: 1 | 2;
  cpus: number;
  memoryMiB: number;
  secureBoot: boolean;
  secureBootTemplate: string;
  disks: string[];
  dvds: number;
  nics: number;
}

export function factsOf(vm: VmConfig): VmFacts {
  return {
    name: vm.name,
    generation: vm.generation,
    cpus: vm.processorCount,
    memoryMiB: vm.memoryMiB,
    secureBoot: vm.generation === 2 && vm.firmware.secureBoot,
    secureBootTemplate: vm.firmware.secureBootTemplate,
    disks: vm.hardDisks.map((d) => d.path),
    dvds: vm.dvdDrives.filter((d) => d.path !== null).length,
    nics: vm.networkAdapters.length,
  };
}
