/**
 * The data a lazy wake serves (lib/ops/wake_lazy.ts): an image's data records as a {@link FaultRunTable} over one
 * file, read with `pread`, never mapped. A raw image is served from the image itself (each run at its record's
 * file offset); a compressed one is decoded first, record by record, into an unnamed scratch file beside the
 * image, and served from there. Either way this process holds neither the data nor a table of it (that is in a
 * scratch file too, read a block at a time): the lazy wake of an image of 524,288 one-page records kept a source
 * per record and the image mapped (1,438 MiB of RSS for 1 GiB of data).
 *
 * @module
 */

import { O } from "../../ffi/constants.ts";
import { close, open, PAGE_SIZE, transferAll } from "../../ffi/libc.ts";
import { FaultRunTable } from "../kernel/fault_runs.ts";
import { FileSource } from "./byte_source.ts";
import { type ImageRecord, KIND, REQUIRED } from "./format.ts";
import type { MemoryLoader } from "./loader.ts";
import { dirOf, scratchFile } from "./tempfile.ts";

/** Bytes of the mapped image decoded between two releases of its pages. */
const RELEASE_EVERY = 16 << 20;

/**
 * An image's data records in a file, and the table of their runs (lib/kernel/fault_runs.ts, in a scratch file in
 * `$TMPDIR`), as the fault server and the background fill of a lazy wake read them.
 */
export class ServedData implements Disposable {
  /** The runs: address, length, offset in {@link fd}. */
  readonly table: FaultRunTable;
  /** Bytes of data the runs hold. */
  readonly bytes: number;
  /** Whether the runs are decoded records in a scratch file (a compressed image), not the image itself. */
  readonly decoded: boolean;
  readonly #src: FileSource;
  #closed = false;

  private constructor(src: FileSource, table: FaultRunTable, bytes: number, decoded: boolean) {
    this.#src = src;
    this.table = table;
    this.bytes = bytes;
    this.decoded = decoded;
  }

  /**
   * The data records among `records` that `serve` accepts, in a file. A compressed record is decoded here (and
   * its decoded checksum checked), before anything is written to a process.
   *
   * @param loader The open image (verified: raw records are served as they are stored).
   * @param records Its records, in address order (holes are skipped).
   * @param serve Which data records to serve.
   * @returns The data; close it once the fault server has stopped.
   */
  static async open(
    loader: MemoryLoader,
    records: Iterable<ImageRecord>,
    serve: (r: ImageRecord) => boolean,
  ): Promise<ServedData> {
    // Without the feature CODEC no record is compressed (checked at open): every run is served from the image.
    const decoded = (loader.header.requiredFeatures & REQUIRED.CODEC) !== 0n;
    const table = new FaultRunTable(scratchFile(Deno.env.get("TMPDIR") || "/tmp"));
    let fd = -1, bytes = 0, size = 0;
    try {
      fd = decoded ? scratchFile(dirOf(loader.path)) : open(loader.path, O.RDONLY | O.CLOEXEC);
      let buf = new Uint8Array(0);
      let sinceRelease = 0;
      for (const r of records) {
        if (r.kind !== KIND.DATA || !serve(r)) continue;
        if (!decoded) {
          table.append(r.address, r.length, r.fileOffset);
        } else {
          if (buf.length < r.length) buf = new Uint8Array(r.length);
          const dst = await loader.readRecord(r, buf.subarray(0, r.length));
          transferAll("pwrite", fd, dst, size, `decoded records of ${loader.path} in a scratch file`);
          table.append(r.address, r.length, size);
          size += r.length;
          sinceRelease += r.storedLength;
          if (sinceRelease >= RELEASE_EVERY) {
            loader.releaseView(); // the mapped image's pages read for decoding leave this process
            sinceRelease = 0;
          }
        }
        bytes += r.length;
      }
      if (decoded) loader.releaseView();
      table.finish();
    } catch (e) {
      if (fd >= 0) close(fd);
      table.close();
      throw e;
    }
    const src = new FileSource(
      decoded ? "(decoded records)" : loader.path,
      fd,
      decoded ? size : loader.fileSize,
    );
    return new ServedData(src, table, bytes, decoded);
  }

  /** The file the runs' offsets are in (the image, or the scratch file of decoded records). */
  get fd(): number {
    return this.#src.fd;
  }

  /**
   * Read the page at `address` (page aligned) into `dst`: its data, or zeros where no run holds it (a hole).
   *
   * @param address The page.
   * @param dst A page-sized buffer.
   * @returns `dst`.
   */
  page(address: bigint, dst: Uint8Array): Uint8Array {
    const run = this.table.find(address);
    if (!run) return dst.fill(0);
    this.#src.read(run.offset + Number(address - run.start), PAGE_SIZE, "data", dst);
    return dst;
  }

  /** Close the files. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    close(this.#src.fd);
    this.table.close();
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
