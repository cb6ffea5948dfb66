// Request shapes of the VHD tools, for validating them where they enter (the service API, the CLI):
// one home, next to the functions that take them.
import { z } from "zod";
import { VHD_FORMATS, type VhdFormat } from "./format.js";

export const VhdFormatSchema = z.enum(VHD_FORMATS as [VhdFormat, ...VhdFormat[]]);
export const VhdCreateTypeSchema = z.enum(["Fixed", "Dynamic"]);

/** Bytes: a positive whole number of 512-byte sectors. */
export const VhdSizeSchema = z
  .number()
  .int()
  .positive()
  .refine((n) => Number.isSafeInteger(n) && n % 512 === 0, { message: "a disk size must be a multiple of 512 bytes" });

const PathSchema = z.string().min(1).refine((p) => !p.includes("\0"), { message: "a path cannot contain NUL" });

/** `vhd new PATH --size S [--fixed|--dynamic] [--format F] [--differencing --parent P [--parent-format F]]` */
export const NewVhdRequestSchema = z
  .object({
    path: PathSchema,
    format: VhdFormatSchema.optional(),
    sizeBytes: VhdSizeSchema.optional(),
    type: VhdCreateTypeSchema.optional(),
    parent: z.object({ path: PathSchema, format: VhdFormatSchema.optional() }).strict().optional(),
  })
  .strict()
  .refine((r) => r.parent !== undefined || r.sizeBytes !== undefined, { message: "give the new disk's size (or a parent for a differencing disk)" });

/** `vhd get PATH [--format F]` */
export const GetVhdRequestSchema = z.object({ path: PathSchema, format: VhdFormatSchema.optional() }).strict();

/** `vhd convert SRC DST [--format F] [--fixed|--dynamic]` */
export const ConvertVhdRequestSchema = z
  .object({ source: PathSchema, sourceFormat: VhdFormatSchema.optional(), destination: PathSchema, format: VhdFormatSchema.optional(), type: VhdCreateTypeSchema.optional() })
  .strict();

/** `vhd resize PATH --size S` */
export const ResizeVhdRequestSchema = z.object({ path: PathSchema, format: VhdFormatSchema.optional(), sizeBytes: VhdSizeSchema }).strict();

/** `vhd merge CHILD [--keep-child]` */
export const MergeVhdRequestSchema = z.object({ path: PathSchema, format: VhdFormatSchema.optional(), keepChild: z.boolean().optional() }).strict();

/** `vhd compact PATH` */
export const CompactVhdRequestSchema = z.object({ path: PathSchema, format: VhdFormatSchema.optional() }).strict();
