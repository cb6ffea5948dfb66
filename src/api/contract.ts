import { z } from "zod";
import * as Q from "./requests.js";
import type { RouteRole } from "./roles.js";
import * as V from "./views.js";

/**
 * THE API contract: every route of vmhostd, defined once. vmhostd registers and validates each
 * one from here (src/service/server), checks the caller's role against `role`, and audits every
 * route with `change: true`; the SDK (packages/sdk) and the CLI take their types from here; the
 * OpenAPI document (/v1/openapi.json) is generated from here (openapi.ts).
 *
 * A route:
 *  - `path` in Fastify's syntax (`/v1/vms/:vm/start`); every `:param` has a schema in `params`.
 *  - `params`, `query`, `body`: zod object schemas. Their keys never collide within one route, so
 *    the SDK takes one input object and splits it (a unit test checks this).
 *  - `reply`: the JSON reply (kind "json"), or `line`: one NDJSON line (kind "stream").
 *  - `kind`: "json"; "stream" (NDJSON lines until the server ends or the client goes away);
 *    "upload" (the request body is the raw bytes, application/octet-stream; the rest is in the
 *    query); "websocket" (binary frames both ways).
 *  - `role`: reader < operator < administrator (roles.ts), or "public" for the two routes that
 *    authenticate their caller themselves.
 *  - `change`: audited (default: any method but GET).
 *  - `localOnly`: refused to HTTPS callers (it hands out or takes host paths by nature).
 *  - `hostPaths`: the body's fields that name host files. Local callers may name any path; remote
 *    callers only files in the media folder (uploads land there).
 *
 * Adding a route: add an entry here, then its handler in src/service/server/handlers.ts (the
 * compiler insists on one per route, typed by this entry). Nothing else: auth, validation, audit,
 * OpenAPI, the SDK method and the access test pick it up.
 */

export type Method = "GET" | "POST" | "PUT" | "PATCH" | "DELETE";
export type RouteKind = "json" | "stream" | "upload" | "websocket";
type Obj = z.AnyZodObject;
const None = z.object({}).strict();
type NoneT = typeof None;

export interface RouteDef<
  P extends Obj = Obj,
  Qy extends Obj = Obj,
  B extends Obj = Obj,
  R extends z.ZodTypeAny = z.ZodTypeAny,
  L extends z.ZodTypeAny = z.ZodTypeAny,
  K extends RouteKind = RouteKind,
> {
  method: Method;
  path: string;
  kind: K;
  role: RouteRole;
  summary: string;
  params: P;
  query: Qy;
  body: B;
  reply: R;
  line: L;
  change: boolean;
  localOnly: boolean;
  hostPaths?: (body: z.output<B>) => (string | null | undefined)[];
}

interface Spec<P extends Obj, Qy extends Obj, B extends Obj, R extends z.ZodTypeAny, L extends z.ZodTypeAny, K extends RouteKind> {
  method: Method;
  path: string;
  kind?: K;
  role: RouteRole;
  summary: string;
  params?: P;
  query?: Qy;
  body?: B;
  reply?: R;
  line?: L;
  change?: boolean;
  localOnly?: boolean;
  hostPaths?: (body: z.output<B>) => (string | null | undefined)[];
}

function route<
  P extends Obj = NoneT,
  Qy extends Obj = NoneT,
  B extends Obj = NoneT,
  R extends z.ZodTypeAny = z.ZodNull,
  L extends z.ZodTypeAny = z.ZodNever,
  K extends RouteKind = "json",
>(s: Spec<P, Qy, B, R, L, K>): RouteDef<P, Qy, B, R, L, K> {
  return {
    method: s.method,
    path: s.path,
    kind: (s.kind ?? "json") as K,
    role: s.role,
    summary: s.summary,
    params: (s.params ?? None) as P,
    query: (s.query ?? None) as Qy,
    body: (s.body ?? None) as B,
    reply: (s.reply ?? z.null()) as R,
    line: (s.line ?? z.never()) as L,
    change: s.change ?? s.method !== "GET",
    localOnly: s.localOnly ?? false,
    ...(s.hostPaths ? { hostPaths: s.hostPaths } : {}),
  };
}

const vm = z.object({ vm: Q.VmRef }).strict();
const named = z.object({ name: Q.Name }).strict();
const vmPath = (rest: string) => `/v1/vms/:vm${rest}`;

export const routes = {
  // ---- host ---------------------------------------------------------------------------------------
  "host.get": route({ method: "GET", path: "/v1/host", role: "reader", summary: "Get-VMHost: accelerator (and why), QEMU and firmware versions, capacity", reply: V.HostView }),
  "host.probeAccelerator": route({ method: "POST", path: "/v1/host/accelerator/probe", role: "administrator", summary: "Time KVM against TCG again and pick the accelerator", reply: V.AcceleratorView }),
  "host.buildAppliance": route({ method: "POST", path: "/v1/appliance/build", role: "administrator", summary: "Build (or reuse) the built-in Linux appliance", body: Q.ApplianceBuild, reply: V.ApplianceView }),
  "host.buildNetboot": route({
    method: "POST",
    path: "/v1/netboot/payload",
    role: "administrator",
    summary: "Write network-boot payloads (shim, GRUB, UKI, iPXE script) from the appliance into a host folder",
    body: Q.Netboot,
    reply: V.NetbootPayload,
    localOnly: true,
  }),
  "host.openapi": route({ method: "GET", path: "/v1/openapi.json", role: "reader", summary: "This API as an OpenAPI 3.1 document", reply: z.record(z.unknown()) }),

  // ---- VMs ----------------------------------------------------------------------------------------
  "vms.list": route({ method: "GET", path: "/v1/vms", role: "reader", summary: "Get-VM: every VM with its state", reply: z.array(V.ListEntry) }),
  "vms.create": route({
    method: "POST",
    path: "/v1/vms",
    role: "administrator",
    summary: "New-VM",
    body: Q.CreateVm,
    reply: V.VmView,
    hostPaths: (b) => [b.disk, b.dvd],
  }),
  "vms.get": route({ method: "GET", path: vmPath(""), role: "reader", summary: "Get-VM for one VM", params: vm, reply: V.VmView }),
  "vms.set": route({ method: "PATCH", path: vmPath(""), role: "administrator", summary: "Set-VM: processors, memory, notes, checkpoint type, display", params: vm, body: Q.SetVm, reply: V.VmView }),
  "vms.remove": route({ method: "DELETE", path: vmPath(""), role: "administrator", summary: "Remove-VM (disks kept unless deleteDisks)", params: vm, query: Q.Remove, reply: V.RemoveReply }),
  "vms.rename": route({ method: "POST", path: vmPath("/rename"), role: "administrator", summary: "Rename-VM", params: vm, body: Q.Rename, reply: V.VmView }),
  "vms.start": route({ method: "POST", path: vmPath("/start"), role: "operator", summary: "Start-VM (or restore its saved state)", params: vm, reply: V.StateReply }),
  "vms.stop": route({ method: "POST", path: vmPath("/stop"), role: "operator", summary: "Stop-VM: shut down through the guest agent or ACPI; force turns it off after the timeout", params: vm, body: Q.Stop, reply: V.StopReply }),
  "vms.turnOff": route({ method: "POST", path: vmPath("/turn-off"), role: "operator", summary: "Stop-VM -TurnOff", params: vm, reply: V.StateReply }),
  "vms.pause": route({ method: "POST", path: vmPath("/pause"), role: "operator", summary: "Suspend-VM", params: vm, reply: V.StateReply }),
  "vms.resume": route({ method: "POST", path: vmPath("/resume"), role: "operator", summary: "Resume-VM", params: vm, reply: V.StateReply }),
  "vms.save": route({ method: "POST", path: vmPath("/save"), role: "operator", summary: "Save-VM", params: vm, reply: V.StateReply }),
  "vms.restart": route({ method: "POST", path: vmPath("/restart"), role: "operator", summary: "Restart-VM (reset)", params: vm, reply: V.StateReply }),
  "vms.diskAdd": route({
    method: "POST",
    path: vmPath("/disks"),
    role: "administrator",
    summary: "Add-VMHardDiskDrive (a new disk, or an existing image)",
    params: vm,
    body: Q.DiskAdd,
    reply: V.VmView,
    hostPaths: (b) => [b.path],
  }),
  "vms.diskRemove": route({ method: "POST", path: vmPath("/disks/remove"), role: "administrator", summary: "Remove-VMHardDiskDrive", params: vm, body: Q.DeviceRef, reply: V.VmView }),
  "vms.dvdSet": route({
    method: "POST",
    path: vmPath("/dvd"),
    role: "administrator",
    summary: "Set-VMDvdDrive: insert an ISO (path) or eject (null)",
    params: vm,
    body: Q.DvdSet,
    reply: V.VmView,
    hostPaths: (b) => [b.path],
  }),
  "vms.floppySet": route({
    method: "POST",
    path: vmPath("/floppy"),
    role: "administrator",
    summary: "Set-VMFloppyDiskDrive (generation 1)",
    params: vm,
    body: Q.FloppySet,
    reply: V.VmView,
    hostPaths: (b) => [b.path],
  }),
  "vms.nicAdd": route({ method: "POST", path: vmPath("/nics"), role: "administrator", summary: "Add-VMNetworkAdapter", params: vm, body: Q.NicAdd, reply: V.VmView }),
  "vms.nicRemove": route({ method: "POST", path: vmPath("/nics/remove"), role: "administrator", summary: "Remove-VMNetworkAdapter", params: vm, body: Q.DeviceRef, reply: V.VmView }),
  "vms.nicConnect": route({ method: "POST", path: vmPath("/nics/connect"), role: "administrator", summary: "Connect-VMNetworkAdapter", params: vm, body: Q.NicConnect, reply: V.VmView }),
  "vms.consoleLog": route({ method: "GET", path: vmPath("/console"), role: "operator", summary: "What the serial console printed", params: vm, reply: V.ConsoleLog }),
  "vms.serialConsole": route({
    method: "GET",
    path: vmPath("/console/serial"),
    kind: "websocket",
    role: "operator",
    summary: "The serial console as a WebSocket (binary frames both ways), proxied by vmhostd",
    params: vm,
    change: true,
  }),
  "vms.graphicalConsole": route({
    method: "GET",
    path: vmPath("/console/vnc"),
    kind: "websocket",
    role: "operator",
    summary: "The graphical console (RFB/VNC, for noVNC) as a WebSocket; the VM needs display on",
    params: vm,
    change: true,
  }),
  "vms.events": route({ method: "GET", path: vmPath("/events"), role: "reader", summary: "The VM's event journal", params: vm, reply: z.array(V.VmEvent) }),
  "vms.eventsFollow": route({
    method: "GET",
    path: vmPath("/events/follow"),
    kind: "stream",
    role: "reader",
    summary: "The journal, then each new event as it happens (NDJSON)",
    params: vm,
    line: V.EventLine,
  }),

  // ---- firmware -------------------------------------------------------------------------------------
  "firmware.get": route({ method: "GET", path: vmPath("/firmware"), role: "reader", summary: "Get-VMFirmware", params: vm, reply: V.FirmwareView }),
  "firmware.set": route({
    method: "PATCH",
    path: vmPath("/firmware"),
    role: "administrator",
    summary: "Set-VMFirmware",
    params: vm,
    body: Q.FirmwareSetRequest,
    reply: V.FirmwareSetResult,
    hostPaths: (b) => [b.networkBootPayload?.dir],
  }),
  "firmware.reset": route({ method: "POST", path: vmPath("/firmware/reset"), role: "administrator", summary: "A new NVRAM from the template (VM off)", params: vm, reply: V.FirmwareSetResult }),

  // ---- checkpoints ----------------------------------------------------------------------------------
  "checkpoints.list": route({ method: "GET", path: vmPath("/checkpoints"), role: "reader", summary: "Get-VMSnapshot: the checkpoint tree and where Now hangs", params: vm, reply: V.CheckpointList }),
  "checkpoints.create": route({
    method: "POST",
    path: vmPath("/checkpoints"),
    role: "operator",
    summary: "Checkpoint-VM (Standard or Production, as the VM's checkpoint type says)",
    params: vm,
    body: Q.CheckpointCreate,
    reply: V.CheckpointResult,
  }),
  "checkpoints.apply": route({
    method: "POST",
    path: vmPath("/checkpoints/apply"),
    role: "operator",
    summary: "Restore-VMSnapshot: starts a checkpoint-apply job (optionally checkpointing Now first)",
    params: vm,
    body: Q.CheckpointApply,
    reply: V.JobView,
  }),
  "checkpoints.remove": route({
    method: "POST",
    path: vmPath("/checkpoints/remove"),
    role: "operator",
    summary: "Remove-VMSnapshot (merges; nothing is lost): starts a checkpoint-remove job with progress",
    params: vm,
    body: Q.CheckpointRemove,
    reply: V.JobView,
  }),
  "checkpoints.rename": route({ method: "POST", path: vmPath("/checkpoints/rename"), role: "operator", summary: "Rename-VMSnapshot", params: vm, body: Q.CheckpointRename, reply: V.CheckpointResult }),

  // ---- integration services -------------------------------------------------------------------------
  "integration.list": route({ method: "GET", path: vmPath("/integration"), role: "reader", summary: "Get-VMIntegrationService", params: vm, reply: V.IntegrationView }),
  "integration.set": route({ method: "POST", path: vmPath("/integration"), role: "administrator", summary: "Enable-/Disable-VMIntegrationService", params: vm, body: Q.IntegrationSet, reply: V.IntegrationView }),
  "integration.kvp": route({ method: "GET", path: vmPath("/kvp"), role: "reader", summary: "KVP pools (external always; intrinsic and guest while the guest answers)", params: vm, reply: V.KvpPools }),
  "integration.kvpPool": route({
    method: "GET",
    path: vmPath("/kvp/:pool"),
    role: "reader",
    summary: "One KVP pool",
    params: z.object({ vm: Q.VmRef, pool: Q.KvpPool }).strict(),
    reply: V.KvpPools,
  }),
  "integration.kvpSet": route({ method: "POST", path: vmPath("/kvp"), role: "administrator", summary: "Set a host KVP item (external pool)", params: vm, body: Q.KvpSet, reply: V.KvpSetReply }),
  "integration.kvpRemove": route({ method: "POST", path: vmPath("/kvp/remove"), role: "administrator", summary: "Remove a host KVP item", params: vm, body: Q.KvpRemove, reply: V.KvpRemoveReply }),
  "integration.vss": route({ method: "GET", path: vmPath("/vss"), role: "reader", summary: "Whether the guest's file systems are frozen", params: vm, reply: V.VssReply }),
  "integration.freeze": route({ method: "POST", path: vmPath("/vss/freeze"), role: "operator", summary: "Freeze the guest's file systems (thawed by the timeout at the latest)", params: vm, body: Q.Freeze, reply: V.VssReply }),
  "integration.thaw": route({ method: "POST", path: vmPath("/vss/thaw"), role: "operator", summary: "Thaw the guest's file systems", params: vm, reply: V.VssReply }),
  "integration.copyFile": route({
    method: "POST",
    path: vmPath("/copy-file"),
    role: "administrator",
    summary: "Copy-VMFile from a host path (local callers): starts a job",
    params: vm,
    body: Q.CopyFile,
    reply: V.JobView,
    localOnly: true,
  }),
  "integration.copyFileUpload": route({
    method: "PUT",
    path: vmPath("/copy-file"),
    kind: "upload",
    role: "administrator",
    summary: "Copy-VMFile of the uploaded bytes (application/octet-stream): starts a job once the upload is complete",
    params: vm,
    query: Q.CopyFileUpload,
    reply: V.JobView,
  }),

  // ---- jobs -----------------------------------------------------------------------------------------
  "jobs.list": route({ method: "GET", path: "/v1/jobs", role: "reader", summary: "Long operations, running and recent", reply: z.array(V.JobView) }),
  "jobs.get": route({ method: "GET", path: "/v1/jobs/:id", role: "reader", summary: "One job", params: z.object({ id: Q.JobId }).strict(), reply: V.JobView }),
  "jobs.follow": route({
    method: "GET",
    path: "/v1/jobs/:id/follow",
    kind: "stream",
    role: "reader",
    summary: "The job now, then at each change until it ends (NDJSON)",
    params: z.object({ id: Q.JobId }).strict(),
    line: V.JobLine,
  }),
  "jobs.cancel": route({ method: "POST", path: "/v1/jobs/:id/cancel", role: "operator", summary: "Cancel a job where that is safe (the caller needs the role the job's route needed)", params: z.object({ id: Q.JobId }).strict(), reply: V.JobView }),

  // ---- media (uploaded ISOs, disk and floppy images) ---------------------------------------------------
  "media.list": route({ method: "GET", path: "/v1/media", role: "reader", summary: "Files in the media folder (uploads)", reply: z.array(V.MediaFile) }),
  "media.upload": route({
    method: "PUT",
    path: "/v1/media/:file",
    kind: "upload",
    role: "administrator",
    summary: "Upload an ISO, disk or floppy image into the media folder (application/octet-stream); refer to it by the path in the reply",
    params: z.object({ file: Q.MediaName }).strict(),
    reply: V.MediaFile,
  }),
  "media.remove": route({ method: "DELETE", path: "/v1/media/:file", role: "administrator", summary: "Delete a file from the media folder", params: z.object({ file: Q.MediaName }).strict(), reply: V.Ok }),

  // ---- switches -------------------------------------------------------------------------------------
  "switches.list": route({ method: "GET", path: "/v1/switches", role: "reader", summary: "Get-VMSwitch", reply: z.array(V.SwitchView) }),
  "switches.create": route({
    method: "POST",
    path: "/v1/switches",
    role: "administrator",
    summary: "New-VMSwitch",
    body: Q.SwitchNew,
    reply: V.SwitchView,
    hostPaths: (b) => [b.bootDir],
  }),
  "switches.get": route({ method: "GET", path: "/v1/switches/:name", role: "reader", summary: "One switch", params: named, reply: V.SwitchView }),
  "switches.remove": route({ method: "DELETE", path: "/v1/switches/:name", role: "administrator", summary: "Remove-VMSwitch", params: named, reply: V.SwitchRemoved }),

  // ---- access: the HTTPS listener, trust, tokens, sessions, audit -----------------------------------
  "service.get": route({ method: "GET", path: "/v1/service", role: "reader", summary: "The HTTPS listener: address, state, the server certificate's SHA-256 fingerprint", reply: V.ListenView }),
  "service.listen": route({
    method: "POST",
    path: "/v1/service/listen",
    role: "administrator",
    summary: 'Listen on HTTPS (TLS 1.3) at an address (":8443", "127.0.0.1:8443", "[::1]:8443"), kept across restarts',
    body: Q.Listen,
    reply: V.ListenView,
    localOnly: true,
  }),
  "service.unlisten": route({ method: "DELETE", path: "/v1/service/listen", role: "administrator", summary: "Stop listening on HTTPS", reply: V.ListenView, localOnly: true }),
  "trust.list": route({ method: "GET", path: "/v1/trust", role: "administrator", summary: "Trusted client certificates and pending trust tokens", reply: V.TrustList }),
  "trust.add": route({ method: "POST", path: "/v1/trust", role: "administrator", summary: "A one-time trust token for a new client (it carries this server's fingerprint)", body: Q.TrustAdd, reply: V.TrustTokenCreated }),
  "trust.remove": route({ method: "DELETE", path: "/v1/trust/:name", role: "administrator", summary: "Remove a trusted certificate (or a pending token); takes effect at once", params: named, reply: V.Ok }),
  "trust.redeem": route({
    method: "POST",
    path: "/v1/trust/redeem",
    role: "public",
    summary: "Present a trust token's secret over a TLS connection with a client certificate: that certificate becomes trusted",
    body: Q.TrustRedeem,
    reply: V.Redeemed,
  }),
  "tokens.list": route({ method: "GET", path: "/v1/tokens", role: "administrator", summary: "API tokens (never their secrets)", reply: z.array(V.TokenView) }),
  "tokens.add": route({ method: "POST", path: "/v1/tokens", role: "administrator", summary: "A named API token with a role; the secret is shown once and stored hashed", body: Q.TokenAdd, reply: V.TokenCreated }),
  "tokens.remove": route({ method: "DELETE", path: "/v1/tokens/:name", role: "administrator", summary: "Revoke an API token (and its browser sessions); takes effect at once", params: named, reply: V.Ok }),
  "session.whoami": route({ method: "GET", path: "/v1/session", role: "reader", summary: "Who the caller is, with which role", reply: V.SessionView }),
  "session.login": route({
    method: "POST",
    path: "/v1/session",
    role: "public",
    summary: "Browser login with an API token: sets a short-lived HttpOnly SameSite=Strict cookie; changes then need the X-CSRF-Token header",
    body: Q.Login,
    reply: V.SessionView,
  }),
  "session.logout": route({ method: "DELETE", path: "/v1/session", role: "reader", summary: "End the browser session", reply: V.Ok }),
  // ---- VMs that travel (issue 11) ---------------------------------------------------------------------
  "vms.export": route({
    method: "POST",
    path: vmPath("/export"),
    role: "administrator",
    summary: "Export-VM: a self-contained folder (configuration, NVRAM, disks, checkpoints, SHA-256 manifest); a running VM keeps running. Starts an export job",
    params: vm,
    body: Q.Export,
    reply: V.JobView,
    hostPaths: (b) => [b.destination],
    localOnly: true,
  }),
  "import.compare": route({
    method: "POST",
    path: "/v1/import/compare",
    role: "administrator",
    summary: "Compare-VM: what of an export does not fit this host, each with its fix; nothing changes. Starts a job (checksums are verified)",
    body: Q.Import,
    reply: V.JobView,
    change: false,
    hostPaths: (b) => [b.path, b.vhdDestination],
    localOnly: true,
  }),
  "import.run": route({
    method: "POST",
    path: "/v1/import",
    role: "administrator",
    summary: "Import-VM (--register in place, or --copy; --generate-new-id). Starts an import job",
    body: Q.Import,
    reply: V.JobView,
    hostPaths: (b) => [b.path, b.vhdDestination],
    localOnly: true,
  }),
  "vms.convertGeneration": route({
    method: "POST",
    path: vmPath("/convert-generation"),
    role: "administrator",
    summary: "Convert-VMGeneration: a new Gen2 VM from an Off Gen1 VM (the source untouched), booted once. Starts a job",
    params: vm,
    body: Q.ConvertGeneration,
    reply: V.JobView,
  }),
  "vms.mbrToGpt": route({ method: "POST", path: vmPath("/mbr2gpt"), role: "administrator", summary: "Runs MBR2GPT /validate and /convert /allowFullOS in a Windows guest through its agent", params: vm, reply: V.Passthrough }),
  "vhd.get": route({ method: "POST", path: "/v1/vhd/get", role: "operator", summary: "Get-VHD: format, sizes, parent chain, which VM uses it", body: Q.VhdGet, reply: V.Passthrough, change: false, hostPaths: (b) => [b.path], localOnly: true }),
  "vhd.new": route({ method: "POST", path: "/v1/vhd/new", role: "administrator", summary: "New-VHD (fixed, dynamic, differencing). Starts a job", body: Q.VhdNew, reply: V.JobView, localOnly: true }),
  "vhd.convert": route({ method: "POST", path: "/v1/vhd/convert", role: "administrator", summary: "Convert-VHD. Starts a job with progress", body: Q.VhdConvert, reply: V.JobView, localOnly: true }),
  "vhd.resize": route({ method: "POST", path: "/v1/vhd/resize", role: "administrator", summary: "Resize-VHD (grow; shrink only where the partitions end before the size). Starts a job", body: Q.VhdResize, reply: V.JobView, localOnly: true }),
  "vhd.merge": route({ method: "POST", path: "/v1/vhd/merge", role: "administrator", summary: "Merge-VHD: a differencing disk into its parent. Starts a job", body: Q.VhdMerge, reply: V.JobView, localOnly: true }),
  "vhd.compact": route({ method: "POST", path: "/v1/vhd/compact", role: "administrator", summary: "Optimize-VHD (dynamic vhdx/vhd, qcow2). Starts a job", body: Q.VhdCompact, reply: V.JobView, localOnly: true }),

  // ---- many hosts (issue 12): peers, Move-VM, and the destination side of a move ------------------
  "peers.list": route({ method: "GET", path: "/v1/peers", role: "administrator", summary: "Other vmhost hosts this service reaches (Move-VM destinations, cluster members)", reply: z.array(V.PeerView) }),
  "peers.add": route({ method: "POST", path: "/v1/peers", role: "administrator", summary: "Enroll with another host using its trust token (vmhost trust add there)", body: Q.PeerAdd, reply: V.PeerView, localOnly: true }),
  "peers.remove": route({ method: "DELETE", path: "/v1/peers/:name", role: "administrator", summary: "Forget a peer host", params: named, reply: V.Ok }),
  "vms.move": route({
    method: "POST",
    path: vmPath("/move"),
    role: "administrator",
    summary: "Move-VM: live migration to a peer host (with --include-storage the disks are copied while the guest runs). Starts a job",
    params: vm,
    body: Q.Move,
    reply: V.JobView,
  }),
  "vms.moveCompare": route({
    method: "POST",
    path: vmPath("/move/compare"),
    role: "administrator",
    summary: "Compare-VM for a move: what would not fit on the destination, each with its fix; nothing changes",
    params: vm,
    body: Q.Move,
    reply: V.MoveCompare,
    change: false,
  }),
  "migrations.compare": route({ method: "POST", path: "/v1/migrations/compare", role: "administrator", summary: "Host to host: would this VM fit here", body: Q.MigrationPrepare, reply: V.MoveCompare, change: false }),
  "migrations.prepare": route({ method: "POST", path: "/v1/migrations", role: "administrator", summary: "Host to host: reserve a move into this host", body: Q.MigrationPrepare, reply: V.Ok }),
  "migrations.upload": route({
    method: "PUT",
    path: "/v1/migrations/:id/files",
    kind: "upload",
    role: "administrator",
    summary: "Host to host: a file of the moving VM's checkpoints",
    params: Q.MigrationId,
    query: Q.MigrationUpload,
    reply: V.Ok,
  }),
  "migrations.start": route({ method: "POST", path: "/v1/migrations/:id/start", role: "administrator", summary: "Host to host: make the VM here and wait for the stream, guest paused", params: Q.MigrationId, reply: V.MigrationStart }),
  "migrations.finish": route({ method: "POST", path: "/v1/migrations/:id/finish", role: "administrator", summary: "Host to host: the stream is complete, run the guest here", params: Q.MigrationId, reply: V.MigrationStatus }),
  "migrations.abort": route({ method: "POST", path: "/v1/migrations/:id/abort", role: "administrator", summary: "Host to host: throw the move away here", params: Q.MigrationId, reply: V.Ok }),
  "migrations.status": route({ method: "GET", path: "/v1/migrations/:id", role: "administrator", summary: "Host to host: where a move into this host stands", params: Q.MigrationId, reply: V.MigrationStatus }),

  "audit.list": route({ method: "GET", path: "/v1/audit", role: "administrator", summary: "The audit log: every change, who, when, result (newest last)", query: Q.AuditQuery, reply: z.array(V.AuditEntry) }),
};

export type Routes = typeof routes;
export type RouteId = keyof Routes;
export const routeIds = Object.keys(routes) as RouteId[];

/** What a caller gives for a route: params, query and body in one object (their keys never collide). */
export type RouteInput<K extends RouteId> = z.input<Routes[K]["params"]> & z.input<Routes[K]["query"]> & z.input<Routes[K]["body"]>;
export type RouteReply<K extends RouteId> = z.output<Routes[K]["reply"]>;
export type RouteLine<K extends RouteId> = z.output<Routes[K]["line"]>;

/** The path of a route with its parameters filled in, each URL-encoded. */
export function buildPath(path: string, params: Record<string, unknown>): string {
  return path.replace(/:([A-Za-z]+)/g, (_m, k: string) => {
    const v = params[k];
    if (v === undefined || v === null || v === "") throw new TypeError(`missing path parameter "${k}" for ${path}`);
    return encodeURIComponent(String(v));
  });
}
