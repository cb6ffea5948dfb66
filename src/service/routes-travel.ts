import type { IncomingMessage, ServerResponse } from "node:http";
import { z } from "zod";
import { CompactVhdRequestSchema, ConvertVhdRequestSchema, GetVhdRequestSchema, MergeVhdRequestSchema, NewVhdRequestSchema, ResizeVhdRequestSchema } from "../images/vhd-api.js";
import { Stream } from "./routes-guest.js";
import { CaptureLiveState } from "./travel/package.js";
import { parseBody, vmRoute, type Route } from "./validate.js";
import type { VmHost } from "./vmhost.js";

/**
 * API routes of VMs that travel (issue 11): Export-VM, Import-VM / Compare-VM, the VHD tools,
 * Convert-VMGeneration. Long operations answer with a stream of JSON lines (progress, then the
 * result or the error), and are cancelled when the client goes away.
 */
export const TravelSchemas = {
  export: z.object({ destination: z.string().min(1), captureLiveState: CaptureLiveState.optional() }).strict(),
  import: z
    .object({
      path: z.string().min(1),
      mode: z.enum(["register", "copy"]).default("register"),
      generateNewId: z.boolean().default(false),
      vhdDestination: z.string().min(1).optional(),
      name: z.string().min(1).optional(),
      /** Switch OLD -> NEW for the imported adapters. */
      switchMap: z.record(z.string().min(1), z.string().min(1)).optional(),
    })
    .strict(),
  convertGeneration: z
    .object({
      newName: z.string().min(1).optional(),
      dryRun: z.boolean().default(false),
      boot: z.boolean().default(true),
      bootTimeoutSeconds: z.number().int().positive().max(3600).optional(),
    })
    .strict(),
};

export const travelRoutes: Route<VmHost>[] = [
  ["POST", /^\/v1\/vhd\/get$/, (m, _p, b) => m.vhd.get(parseBody(GetVhdRequestSchema, b))],
  ["POST", vmRoute("mbr2gpt"), (m, [n]) => m.conversions.mbr2gpt(n!)],
];

type Handler = (m: VmHost, body: unknown, progress: (fraction: number, what: string) => void, signal: AbortSignal, name?: string) => Promise<unknown>;

const streams: [RegExp, Handler][] = [
  [vmRoute("export"), (m, b, p, s, n) => m.exports.export(n!, parseBody(TravelSchemas.export, b), p, s)],
  [/^\/v1\/import\/compare$/, (m, b, p, s) => m.imports.compare(parseBody(TravelSchemas.import, b), p, s)],
  [/^\/v1\/import$/, (m, b, p, s) => m.imports.import(parseBody(TravelSchemas.import, b), p, s)],
  [vmRoute("convert-generation"), (m, b, p, _s, n) => m.conversions.convert(n!, parseBody(TravelSchemas.convertGeneration, b), p)],
  [/^\/v1\/vhd\/new$/, (m, b, p, s) => m.vhd.create(parseBody(NewVhdRequestSchema, b), p, s)],
  [/^\/v1\/vhd\/convert$/, (m, b, p, s) => m.vhd.convert(parseBody(ConvertVhdRequestSchema, b), p, s)],
  [/^\/v1\/vhd\/resize$/, (m, b, p, s) => m.vhd.resize(parseBody(ResizeVhdRequestSchema, b), p, s)],
  [/^\/v1\/vhd\/merge$/, (m, b, p, s) => m.vhd.merge(parseBody(MergeVhdRequestSchema, b), p, s)],
  [/^\/v1\/vhd\/compact$/, (m, b, p, s) => m.vhd.compact(parseBody(CompactVhdRequestSchema, b), p, s)],
];

/**
 * The streaming routes of this file (POST only); false when the request is none of them.
 * `onActivity` is called with each progress line, so an idle-exit timer does not end a long export.
 */
export async function handleTravelStream(
  m: VmHost,
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
  readBody: (r: IncomingMessage) => Promise<unknown>,
  onActivity: () => void = () => undefined,
): Promise<boolean> {
  if (req.method !== "POST") return false;
  let match: RegExpExecArray | null = null;
  const hit = streams.find(([re]) => (match = re.exec(url.pathname)) !== null);
  if (!hit || !match) return false;
  const name = (match as RegExpExecArray)[1];
  const s = new Stream(res);
  const ac = new AbortController();
  // The client went away before the answer was complete: the operation stops and cleans up.
  res.on("close", () => {
    if (!res.writableFinished) ac.abort();
  });
  try {
    let lastAt = 0;
    let lastWhat = "";
    const progress = (fraction: number, what: string) => {
      const now = Date.now();
      if (fraction < 1 && what === lastWhat && now - lastAt < 200) return;
      lastAt = now;
      lastWhat = what;
      onActivity();
      s.line({ type: "progress", fraction, what });
    };
    const body = await readBody(req);
    const result = await hit[1](m, body, progress, ac.signal, name === undefined ? undefined : decodeURIComponent(name));
    s.line({ type: "result", result });
    s.end();
  } catch (err) {
    s.fail(err);
  }
  return true;
}
