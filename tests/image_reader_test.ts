import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { Mapping, PAGE_SIZE, tempDir } from "./_image.ts";
import { MAP, O, PROT } from "../ffi/constants.ts";
import { close, mmap, munmap, open } from "../ffi/libc.ts";
import { MemoryPersister } from "../lib/image/persister.ts";
import { MemoryLoader } from "../lib/image/loader.ts";
import { segmentSource } from "../lib/image/sources.ts";
import { openInput } from "../lib/image/stream.ts";
import { StreamSource } from "../lib/image/stream_input.ts";
import { type ByteSource, BytesSource, FileSource, MappedSource } from "../lib/image/byte_source.ts";
import { type FrameWalk, readImageIndex, readTail, walkFrames } from "../lib/image/reader.ts";
import { decodeHeaderBlock, encodeHeaderBlock } from "../lib/image/header.ts";
import { encodeFooter, type Footer } from "../lib/image/footer.ts";
import { encodeFrameHeader, encodeTable } from "../lib/image/frames.ts";
import { checksum } from "../lib/image/checksum.ts";
import {
  DIRECTORY_FIELD,
  ENTRY_FIELD,
  FIXED_HEADER_LENGTH,
  FOOTER_FIELD,
  FRAME_FIELD,
  HEADER_FIELD,
  KIND,
} from "../lib/image/format.ts";
import { encodeDirectory } from "../lib/image/frames.ts";
import { ZstdCodec } from "../lib/codecs/zstd.ts";
import { ImageError } from "../lib/errors.ts";

/** A small image of two regions (one compressed record per page) and a segment, with a section. */
async function smallImage(path: string): Promise<void> {
  using a = new Mapping(6 * PAGE_SIZE);
  const text = new TextEncoder().encode("one reader, two back ends ".repeat(2000));
  a.bytes().set(text.subarray(0, 3 * PAGE_SIZE)); // then three zero pages: a hole
  const sab = new SharedArrayBuffer(2 * PAGE_SIZE);
  new Uint8Array(sab).set(text.subarray(0, sab.byteLength));
  const seg = segmentSource("heap", sab);
  const p = await MemoryPersister.create(path, {
    regions: [a.region],
    segments: [seg],
    fsync: false,
    chunkSize: PAGE_SIZE,
    codec: new ZstdCodec(1),
  });
  await p.store(a.addr, 3 * PAGE_SIZE);
  await p.storeGap(a.addr + BigInt(3 * PAGE_SIZE), 3 * PAGE_SIZE);
  await p.store(0n, sab.byteLength, seg);
  p.addSection("threads", new Uint8Array(24).fill(3));
  await p.finalize();
}

/** Walk the data area of the image at `path` through `src`, keeping a copy of each record's stored bytes. */
async function walk(
  src: ByteSource,
  path: string,
  directory?: MemoryLoader["frames"],
): Promise<{ walk: FrameWalk; stored: Uint8Array[] }> {
  using img = await MemoryLoader.open(path);
  const header = decodeHeaderBlock(path, await src.read(0, img.header.headerLength, "header block"));
  const stored: Uint8Array[] = [];
  const w = await walkFrames(src, {
    header: header.fields,
    regions: header.regions,
    directory,
    endAt: directory ? img.footer.indexOffset - 64 : undefined,
    onRecord: (_r, b) => void stored.push(b.slice()),
  });
  return { walk: w, stored };
}

Deno.test("`walkFrames()` reads the same frames, records and bytes through pread, a mapping and a stream", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/small.img`;
  await smallImage(path);
  const size = Deno.statSync(path).size;
  using img = await MemoryLoader.open(path);
  assert(img.records.some((r) => r.kind === KIND.HOLE) && img.records.some((r) => r.codec === 1));
  const fd = open(path, O.RDONLY | O.CLOEXEC);
  const base = mmap(0n, BigInt(size), PROT.READ, MAP.PRIVATE, fd, 0n);
  try {
    const file = new FileSource(path, fd, size);
    const index = await readImageIndex(file, size);
    assertEquals(index.tableChecksums.length, index.frames.length);
    assertEquals(index.frames, img.frames);
    const byPread = await walk(file, path, index.frames);
    const byMap = await walk(new MappedSource(path, base, size), path, index.frames);
    const stream = new StreamSource(await openInput(path), path);
    let byStream;
    try {
      byStream = await walk(stream, path);
      assertEquals(stream.offset, byStream.walk.tailAt);
    } finally {
      await stream.close();
    }
    for (const w of [byPread, byMap, byStream]) {
      assertEquals(w.walk.records, img.records);
      assertEquals(w.walk.frames.map((f) => ({ ...f, tableChecksum: 0n })), [...img.frames]);
      assertEquals(w.walk.dataRecords, img.records.filter((r) => r.kind === KIND.DATA).length);
      assertEquals(w.walk.tailAt, img.footer.indexOffset);
      const data = img.records.filter((r) => r.kind === KIND.DATA);
      assertEquals(w.stored.map(checksum), data.map((r) => r.checksum));
    }
    // The tail, read from the bytes that end the file, says what the file says.
    const tailBytes = file.read(img.footer.indexOffset, size - img.footer.indexOffset, "tail");
    const tail = await readTail(
      new BytesSource(path, tailBytes, img.footer.indexOffset),
      size,
      img.footer.indexOffset,
    );
    assertEquals(tail.footer, img.footer);
    assertEquals(tail.sections, [...img.sections]);
    assertEquals(tail.directory, [...img.frames]);
  } finally {
    munmap(base, BigInt(size));
    close(fd);
  }
});

Deno.test("the byte sources refuse a read out of bounds, out of order or past a stream's end, naming the offset", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/small.img`;
  await smallImage(path);
  const size = Deno.statSync(path).size;
  const fd = open(path, O.RDONLY | O.CLOEXEC);
  try {
    const file = new FileSource(path, fd, size);
    await assertRejects(
      async () => await file.read(size - 8, 16, "footer"),
      ImageError,
      "lies outside the file",
    );
    const bytes = new BytesSource(path, file.read(0, 256, "head"), 0);
    await assertRejects(async () => await bytes.read(200, 100, "thing"), ImageError, "lies outside [0, 256)");
    await assertRejects(
      async () => await bytes.zeros(0, 8, "padding"),
      ImageError,
      "non-zero byte in padding",
    );
  } finally {
    close(fd);
  }
  const short = (await Deno.readFile(path)).subarray(0, FIXED_HEADER_LENGTH + 10);
  const stream = new StreamSource(ReadableStream.from([short]), "short");
  try {
    await assertRejects(
      async () => await stream.read(8, 8, "fixed header"),
      ImageError,
      "expected the fixed header at offset 8",
    );
    await stream.read(0, FIXED_HEADER_LENGTH, "fixed header");
    const e = await assertRejects(
      async () => await stream.read(FIXED_HEADER_LENGTH, 64, "frame header"),
      ImageError,
    );
    assert(
      e.message.includes("stream ended in the frame header") && e.offset === FIXED_HEADER_LENGTH + 10,
      e.message,
    );
  } finally {
    await stream.close();
  }
});

Deno.test("the named field offsets are where the encoders put each field", () => {
  const v = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);
  const footer: Footer = {
    headerLength: 1001,
    headerChecksum: 1002n,
    regionsOffset: 1003,
    regionsLength: 1004,
    indexOffset: 1005,
    indexLength: 1006,
    indexChecksum: 1007n,
    sectionsOffset: 1008,
    sectionsLength: 1009,
    sectionsChecksum: 1010n,
    frameCount: 1011,
    fileSize: 1012,
    dataBytes: 1013,
  };
  const f = v(encodeFooter(footer));
  const names: [keyof typeof FOOTER_FIELD, keyof Footer][] = [
    ["HEADER_LENGTH", "headerLength"],
    ["HEADER_CHECKSUM", "headerChecksum"],
    ["REGIONS_OFFSET", "regionsOffset"],
    ["REGIONS_LENGTH", "regionsLength"],
    ["INDEX_OFFSET", "indexOffset"],
    ["INDEX_LENGTH", "indexLength"],
    ["INDEX_CHECKSUM", "indexChecksum"],
    ["SECTIONS_OFFSET", "sectionsOffset"],
    ["SECTIONS_LENGTH", "sectionsLength"],
    ["SECTIONS_CHECKSUM", "sectionsChecksum"],
    ["FRAME_COUNT", "frameCount"],
    ["FILE_SIZE", "fileSize"],
    ["DATA_BYTES", "dataBytes"],
  ];
  for (const [field, key] of names) {
    assertEquals(f.getBigUint64(FOOTER_FIELD[field], true), BigInt(footer[key]), field);
  }
  assertEquals(
    f.getBigUint64(FOOTER_FIELD.CHECKSUM, true),
    checksum(new Uint8Array(f.buffer, 0, FOOTER_FIELD.CHECKSUM)),
  );

  const { bytes, fields } = encodeHeaderBlock(
    { requiredFeatures: 1n, optionalFeatures: 1n, pageSize: PAGE_SIZE, arch: 62 },
    { pid: 7, timeMs: 0, commandLine: ["x"], kernelRelease: "k", bootId: "b" },
    [],
  );
  const h = v(bytes);
  assertEquals(h.getBigUint64(HEADER_FIELD.REQUIRED_FEATURES, true), 1n);
  assertEquals(h.getUint32(HEADER_FIELD.PAGE_SIZE, true), PAGE_SIZE);
  assertEquals(h.getUint32(HEADER_FIELD.ARCH, true), 62);
  assertEquals(Number(h.getBigUint64(HEADER_FIELD.HEADER_LENGTH, true)), bytes.length);
  assertEquals(Number(h.getBigUint64(HEADER_FIELD.SOURCE_OFFSET, true)), fields.sourceOffset);
  assertEquals(Number(h.getBigUint64(HEADER_FIELD.REGIONS_OFFSET, true)), fields.regionsOffset);
  assertEquals(h.getBigUint64(HEADER_FIELD.CHECKSUM, true), fields.headerChecksum);

  const frame = {
    offset: 4096,
    isEnd: false,
    count: 3,
    segment: 2,
    start: 0x1000n,
    end: 0x9000n,
    dataLength: 77,
    tableChecksum: 55n,
    frameChecksum: 0n,
  };
  const fr = v(encodeFrameHeader(frame));
  assertEquals(fr.getUint32(FRAME_FIELD.COUNT, true), 3);
  assertEquals(fr.getUint32(FRAME_FIELD.SEGMENT, true), 2);
  assertEquals(fr.getBigUint64(FRAME_FIELD.START, true), 0x1000n);
  assertEquals(fr.getBigUint64(FRAME_FIELD.END, true), 0x9000n);
  assertEquals(fr.getBigUint64(FRAME_FIELD.DATA_LENGTH, true), 77n);
  assertEquals(fr.getBigUint64(FRAME_FIELD.TABLE_CHECKSUM, true), 55n);
  assertEquals(fr.getBigUint64(FRAME_FIELD.CHECKSUM, true), frame.frameChecksum);
  const d = v(encodeDirectory([frame]));
  assertEquals(d.getBigUint64(DIRECTORY_FIELD.FRAME_OFFSET, true), 4096n);
  assertEquals(d.getBigUint64(DIRECTORY_FIELD.FRAME_CHECKSUM, true), frame.frameChecksum);
  assertEquals(d.getUint32(DIRECTORY_FIELD.SEGMENT, true), 2);
  const e = v(encodeTable([{
    address: 0x2000n,
    length: 10,
    storedLength: 9,
    checksum: 1n,
    decodedChecksum: 2n,
    kind: 0,
    codec: 1,
    flags: 1,
    segment: 0,
    fileOffset: 0,
  }]));
  assertEquals(e.getBigUint64(ENTRY_FIELD.ADDRESS, true), 0x2000n);
  assertEquals(e.getUint32(ENTRY_FIELD.STORED_LENGTH, true), 9);
  assertEquals(e.getBigUint64(ENTRY_FIELD.DECODED_CHECKSUM, true), 2n);
  assertEquals(e.getUint8(ENTRY_FIELD.CODEC), 1);
  assertEquals(e.getUint16(ENTRY_FIELD.FLAGS, true), 1);
});
