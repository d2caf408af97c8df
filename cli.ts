/**
 * The cryo command line: `deno run -A cli.ts <command> [options]`. `--help` lists the commands.
 *
 * @module
 */

import { main } from "./lib/cli/main.ts";
import { checkpointCommand } from "./lib/cli/commands/checkpoint.ts";
import { restoreCommand } from "./lib/cli/commands/restore.ts";
import { diffCommand, inspectCommand, verifyCommand } from "./lib/cli/commands/image.ts";
import { regionsCommand } from "./lib/cli/commands/regions.ts";
import { mapCommand } from "./lib/cli/commands/map.ts";
import { demoCommand } from "./lib/cli/commands/demo.ts";
import { debugCommand } from "./lib/cli/commands/debug.ts";
import { flattenCommand } from "./lib/cli/commands/flatten.ts";
import { hibernateCommand, serveCommand, wakeCommand } from "./lib/cli/commands/hibernate.ts";

if (import.meta.main) {
  const code = await main([
    checkpointCommand,
    restoreCommand,
    hibernateCommand,
    wakeCommand,
    serveCommand,
    inspectCommand,
    verifyCommand,
    diffCommand,
    flattenCommand,
    regionsCommand,
    mapCommand,
    demoCommand,
    debugCommand,
  ], Deno.args);
  Deno.exit(code);
}
