import { test } from "node:test";
import assert from "node:assert/strict";
import { buildArgv } from "../../src/engine/qemu/argv.js";
import { sampleVm } from "../helpers/sample-vm.js";

test("gen1 argv: a SCSI disk at 0:0 beside the IDE boot disk at 0:0 gets no bootindex (QEMU refuses a bootindex twice)", () => {
  const vm = sampleVm({
    generation: 1,
    hardDisks: [
      { controllerType: "IDE", controllerNumber: 0, controllerLocation: 0, path: "/d/boot.qcow2", format: "qcow2" },
      { controllerType: "SCSI", controllerNumber: 0, controllerLocation: 0, path: "/d/data.img", format: "raw" },
    ],
  });
  const a = buildArgv(vm, { qmpSocket: "/q", serialSocket: "/s", consoleLog: "/c", agentSocket: "/a", pidFile: "/p" }, { accel: "tcg" });
  const devices = a.flatMap((x, i) => (a[i - 1] === "-device" ? [x] : []));
  const ide = devices.find((d) => d.startsWith("ide-hd,"))!;
  const scsi = devices.find((d) => d.startsWith("scsi-hd,"))!;
  assert.match(ide, /bootindex=1/);
  assert.doesNotMatch(scsi, /bootindex/);
});
