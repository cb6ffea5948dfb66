/**
 * Device path <-> UEFI text, the forms edk2's DevicePathToText prints and DevicePathFromText
 * reads, both driven by the node table in nodes.ts.
 *
 * Exactness: by default a node is printed in its named form only when that text parses back
 * to the same bytes; otherwise (odd lengths, fields a form cannot show, characters that
 * would break the syntax) it is printed in edk2's generic form `Msg(11,<hex>)`, which always
 * round-trips. Pass `exact: false` to get edk2's output even where it loses information.
 *
 * The default flags (DisplayOnly FALSE, AllowShortcuts FALSE) are the ones OVMF's BdsDxe
 * prints its "loading Boot#### ... from <path>" lines with; the fixture tests compare our
 * text with those lines.
 */
import { DevicePathError } from "../errors.js";
import { encodeUcs2 } from "../ucs2.js";
import {
  bytesEqual, endEntireNode, endInstanceNode, isEndEntire, isEndInstance, makeNode, parseDevicePath,
  type DevicePath, type DevicePathNode, NODE_TYPE,
} from "./binary.js";
import { hexBytes, parseHexBytes, parseNum } from "./codec.js";
import { Args, specFor, TEXT_PARSERS, type DecodedNode, type PrintOptions } from "./nodes.js";

export interface ToTextOptions {
  /** edk2 DisplayOnly (default false): shorter lossy forms; no exactness check. */
  displayOnly?: boolean;
  /** edk2 AllowShortcuts (default false): VenPcAnsi(), UartFlowCtrl(), short AcpiEx. */
  allowShortcuts?: boolean;
  /** Fall back to the generic form when a named form would lose bytes (default true). */
  exact?: boolean;
}

export interface FromTextOptions {
  /**
   * Reject `Name(...)` nodes whose name is unknown (default true). edk2 turns them into
   * file-path nodes, which hides typos.
   */
  strict?: boolean;
}

const GENERIC_NAMES: ReadonlyMap<number, string> = new Map([
  [NODE_TYPE.HARDWARE, "HardwarePath"],
  [NODE_TYPE.ACPI, "AcpiPath"],
  [NODE_TYPE.MESSAGING, "Msg"],
  [NODE_TYPE.MEDIA, "MediaPath"],
  [NODE_TYPE.BBS, "BbsPath"],
]);
const GENERIC_TYPES: ReadonlyMap<string, number> = new Map([...GENERIC_NAMES].map(([t, n]) => [n, t]));

/** edk2's DevPathToTextNodeGeneric: `Msg(subtype,hex)`, or `Path(type,subtype,hex)`. */
export function genericNodeText(node: DevicePathNode): string {
  const name = GENERIC_NAMES.get(node.type);
  const head = name !== undefined ? `${name}(${node.subType}` : `Path(${node.type},${node.subType}`;
  return node.data.length > 0 ? `${head},${hexBytes(node.data)})` : `${head})`;
}

/**
 * Decodes a node through the table; null when it is unknown or malformed for its type. An
 * IPv4/IPv6 node of the older, shorter length decodes with the missing fields as zero.
 */
export function decodeNode(node: DevicePathNode): DecodedNode | null {
  const loose = specFor(node.type, node.subType)?.decodeLoose(node.data) ?? null;
  if (loose === null) return null;
  return { kind: specFor(node.type, node.subType)!.kind, ...loose.fields } as DecodedNode;
}

function printOpts(o: ToTextOptions | undefined): PrintOptions {
  return { displayOnly: o?.displayOnly === true, allowShortcuts: o?.allowShortcuts === true };
}

/** Text of one node (not an End node). */
export function nodeToText(node: DevicePathNode, options?: ToTextOptions): string {
  const spec = specFor(node.type, node.subType);
  const loose = spec?.decodeLoose(node.data) ?? null;
  if (spec === undefined || loose === null) return genericNodeText(node);
  const fields = loose.fields;
  const o = { ...printOpts(options), legacy: loose.legacy };
  const texts = spec.print(fields, o);
  if (o.displayOnly || options?.exact === false) return texts[0]!;
  const candidates = o.allowShortcuts ? [...texts, ...spec.print(fields, { ...o, allowShortcuts: false })] : texts;
  for (const text of candidates) {
    if (roundTrips(text, node)) return text;
  }
  return genericNodeText(node);
}

function roundTrips(text: string, node: DevicePathNode): boolean {
  if (!balanced(text)) return false;
  try {
    const path = devicePathFromText(text);
    // A single node plus the End node, identical bytes.
    return path.length === 2 && path[0]!.type === node.type && path[0]!.subType === node.subType && bytesEqual(path[0]!.data, node.data);
  } catch {
    return false;
  }
}

/**
 * Text of a device path as edk2 prints it: nodes joined with "/", an End Instance node as
 * "," (edk2 then still writes the "/" separator, giving "A,/B").
 */
export function devicePathToText(path: DevicePath | Uint8Array, options?: ToTextOptions): string {
  const nodes = path instanceof Uint8Array ? parseDevicePath(path) : path;
  let out = "";
  const exact = options?.exact !== false && options?.displayOnly !== true;
  for (const node of nodes) {
    // End nodes carrying data have no text of their own; exact mode prints them generically.
    if (isEndEntire(node)) {
      if (exact && node.data.length > 0) out += (out.length > 0 ? "/" : "") + genericNodeText(node);
      break;
    }
    if (isEndInstance(node) && (node.data.length === 0 || !exact)) {
      out += ",";
      continue;
    }
    if (out.length > 0) out += "/";
    out += isEndInstance(node) ? genericNodeText(node) : nodeToText(node, options);
  }
  return out;
}

// ---------------------------------------------------------------------------------------

type Token = { kind: "node"; text: string } | { kind: "instance" };

/** Splits at "/" and "," outside parentheses (edk2 GetNextDeviceNodeStr); "," ends an instance. */
function tokenize(text: string): Token[] {
  const out: Token[] = [];
  let i = 0;
  const n = text.length;
  while (i < n) {
    while (i < n && text[i] === "/") i++;
    if (i >= n) break;
    const start = i;
    let depth = 0;
    while (i < n) {
      const c = text[i];
      if (depth === 0 && (c === "/" || c === ",")) break;
      if (c === "(") depth++;
      else if (c === ")" && depth > 0) depth--;
      i++;
    }
    if (i > start) out.push({ kind: "node", text: text.slice(start, i) });
    if (text[i] === ",") out.push({ kind: "instance" });
    if (i < n) i++;
  }
  return out;
}

/** Parentheses balance, so the text cannot swallow the separators around it. */
function balanced(text: string): boolean {
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "(") depth++;
    else if (c === ")" && --depth < 0) return false;
  }
  return depth === 0;
}

const NAMED_NODE = /^([A-Za-z][A-Za-z0-9_-]*)\(([\s\S]*)\)$/;

/** One text node to a binary node. */
export function nodeFromText(text: string, options?: FromTextOptions): DevicePathNode {
  const m = NAMED_NODE.exec(text);
  if (m !== null) {
    const name = m[1]!;
    const inner = m[2]!;
    const entry = TEXT_PARSERS.get(name);
    if (entry !== undefined) {
      const args = new Args(name, entry.spec.rawArgs ? [inner] : inner.split(","), inner);
      const fields = entry.parse(args);
      return makeNode(entry.spec.type, entry.spec.subType, entry.spec.encode(fields));
    }
    const genericType = GENERIC_TYPES.get(name);
    if (genericType !== undefined || name === "Path") {
      const parts = inner.split(",");
      const args = new Args(name, parts, inner).max(genericType !== undefined ? 2 : 3);
      const type = genericType ?? parseNum(args.at(0), 8, "node type");
      const rest = genericType !== undefined ? 0 : 1;
      const subType = parseNum(args.at(rest), 8, "node subtype");
      return makeNode(type, subType, parseHexBytes(args.at(rest + 1), "node data"));
    }
    if (options?.strict !== false) {
      throw new DevicePathError("UNKNOWN_NODE", `unknown device path node ${JSON.stringify(name)}`);
    }
  }
  // Anything else is a file path node, as in edk2.
  return makeNode(NODE_TYPE.MEDIA, 4, encodeUcs2(text, true));
}

/** Parses a text device path into nodes (ending with End Entire). */
export function devicePathFromText(text: string, options?: FromTextOptions): DevicePath {
  const tokens = tokenize(text.trim());
  if (tokens.length === 0) throw new DevicePathError("EMPTY", "empty device path text");
  const nodes: DevicePathNode[] = [];
  for (const t of tokens) {
    if (nodes.length > 0 && isEndEntire(nodes[nodes.length - 1]!)) {
      throw new DevicePathError("SYNTAX", "nothing may follow an End Entire node");
    }
    nodes.push(t.kind === "instance" ? endInstanceNode() : nodeFromText(t.text, options));
  }
  if (!isEndEntire(nodes[nodes.length - 1]!)) nodes.push(endEntireNode());
  return nodes;
}
