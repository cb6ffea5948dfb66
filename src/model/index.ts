export * from "./schema.js";
export * from "./names.js";
export * from "./rules.js";
export * from "./limits.js";
export * from "./store.js";
export * from "./macpool.js";
export * from "./devices.js";
export * from "./upgrade.js";
