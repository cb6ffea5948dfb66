import { FirmwareSetRequest } from "./firmware.js";
import type { VmHost } from "./vmhost.js";
import { parseBody, vmRoute, type Route } from "./validate.js";

/** API routes of Get-VMFirmware / Set-VMFirmware. */
export const firmwareRoutes: Route<VmHost>[] = [
  ["GET", vmRoute("firmware"), (m, [n]) => m.firmware.view(n!)],
  ["PATCH", vmRoute("firmware"), (m, [n], b) => m.firmware.set(n!, parseBody(FirmwareSetRequest, b))],
  ["POST", vmRoute("firmware/reset"), (m, [n]) => m.firmware.reset(n!)],
];
