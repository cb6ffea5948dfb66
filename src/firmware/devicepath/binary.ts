/**
 * Binary device paths: a packed list of EFI_DEVICE_PATH_PROTOCOL nodes
 * {UINT8 Type; UINT8 SubType; UINT16 Length (LE, header included)} ending with an
 * End Entire node (0x7F,0xFF). End Instance nodes (0x7F,0x01) separate instances.
 *
 * A path is kept as its list of nodes, end nodes included, each with its bytes as found,
 * so encode(parse(x)) is x byte for byte whatever the node types are.
 */
import { DevicePathError } from "../errors.js";

export interface DevicePathNode {
  readonly type: number;
  readonly subType: number;
  /** Bytes after the 4-byte header. */
  readonly data: Uint8Array;
}

/** Nodes in order, ending with the End Entire node. */
export type DevicePath = readonly DevicePathNode[];

export const NODE_TYPE = {
  HARDWARE: 0x01,
  ACPI: 0x02,
  MESSAGING: 0x03,
  MEDIA: 0x04,
  BBS: 0x05,
  END: 0x7f,
} as const;

export const END_ENTIRE_SUBTYPE = 0xff;
export const END_INSTANCE_SUBTYPE = 0x01;
/** Longest node: the Length field is 16 bits. */
export const MAX_NODE_DATA = 0xffff - 4;

export function isEndEntire(n: DevicePathNode): boolean {
  return n.type === NODE_TYPE.END && n.subType === END_ENTIRE_SUBTYPE;
}

export function isEndInstance(n: DevicePathNode): boolean {
  return n.type === NODE_TYPE.END && n.subType === END_INSTANCE_SUBTYPE;
}

export function endEntireNode(): DevicePathNode {
  return { type: NODE_TYPE.END, subType: END_ENTIRE_SUBTYPE, data: new Uint8Array(0) };
}

export function endInstanceNode(): DevicePathNode {
  return { type: NODE_TYPE.END, subType: END_INSTANCE_SUBTYPE, data: new Uint8Array(0) };
}

export function makeNode(type: number, subType: number, data: Uint8Array): DevicePathNode {
  if (data.length > MAX_NODE_DATA) throw new DevicePathError("TOO_LONG", `node of ${data.length + 4} bytes exceeds 65535`);
  return { type: type & 0xff, subType: subType & 0xff, data };
}

/**
 * Reads one device path starting at `offset`, up to and including its End Entire node.
 * Returns the nodes and the offset just past them.
 */
export function readDevicePath(bytes: Uint8Array, offset = 0, end = bytes.length): { path: DevicePathNode[]; next: number } {
  const nodes: DevicePathNode[] = [];
  let off = offset;
  for (;;) {
    if (off + 4 > end) {
      throw new DevicePathError(
        off === end ? "MISSING_END" : "TRUNCATED",
        off === end ? `device path has no End node (after ${nodes.length} nodes)` : `node header truncated at byte ${off - offset}`,
      );
    }
    const type = bytes[off]!;
    const subType = bytes[off + 1]!;
    const len = bytes[off + 2]! | (bytes[off + 3]! << 8);
    if (len < 4) throw new DevicePathError("BAD_NODE_LENGTH", `node ${type},${subType} at byte ${off - offset} has length ${len} < 4`);
    if (off + len > end) {
      throw new DevicePathError("TRUNCATED", `node ${type},${subType} at byte ${off - offset} runs ${off + len - end} bytes past the end`);
    }
    const node: DevicePathNode = { type, subType, data: bytes.slice(off + 4, off + len) };
    nodes.push(node);
    off += len;
    if (isEndEntire(node)) return { path: nodes, next: off };
  }
}

/** Exactly one device path filling `bytes`. */
export function parseDevicePath(bytes: Uint8Array): DevicePath {
  if (bytes.length === 0) throw new DevicePathError("EMPTY", "empty device path");
  const { path, next } = readDevicePath(bytes, 0, bytes.length);
  if (next !== bytes.length) throw new DevicePathError("TRAILING_BYTES", `${bytes.length - next} bytes after the End node`);
  return path;
}

/** A packed list of device paths filling `bytes` (EFI_LOAD_OPTION.FilePathList). */
export function parseDevicePathList(bytes: Uint8Array): DevicePath[] {
  if (bytes.length === 0) throw new DevicePathError("EMPTY", "empty device path list");
  const out: DevicePath[] = [];
  let off = 0;
  while (off < bytes.length) {
    const { path, next } = readDevicePath(bytes, off, bytes.length);
    out.push(path);
    off = next;
  }
  return out;
}

export function devicePathByteLength(path: DevicePath): number {
  let n = 0;
  for (const node of path) n += 4 + node.data.length;
  return n;
}

export function encodeDevicePath(path: DevicePath): Uint8Array {
  const out = new Uint8Array(devicePathByteLength(path));
  let off = 0;
  for (const node of path) {
    const len = 4 + node.data.length;
    if (len > 0xffff) throw new DevicePathError("TOO_LONG", `node of ${len} bytes exceeds 65535`);
    out[off] = node.type;
    out[off + 1] = node.subType;
    out[off + 2] = len & 0xff;
    out[off + 3] = len >> 8;
    out.set(node.data, off + 4);
    off += len;
  }
  return out;
}

export function encodeDevicePathList(paths: readonly DevicePath[]): Uint8Array {
  const parts = paths.map(encodeDevicePath);
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** The instances of a path, each without its End node. */
export function instancesOf(path: DevicePath): DevicePathNode[][] {
  const out: DevicePathNode[][] = [[]];
  for (const node of path) {
    if (isEndEntire(node)) break;
    if (isEndInstance(node)) out.push([]);
    else out[out.length - 1]!.push(node);
  }
  return out;
}

/** Appends a standard End Entire node when the list lacks one. */
export function terminate(nodes: readonly DevicePathNode[]): DevicePath {
  const last = nodes[nodes.length - 1];
  return last !== undefined && isEndEntire(last) ? nodes : [...nodes, endEntireNode()];
}

export function nodesEqual(a: DevicePathNode, b: DevicePathNode): boolean {
  return a.type === b.type && a.subType === b.subType && bytesEqual(a.data, b.data);
}

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
