/**
 * The tail of an image being written: the END frame, whose data holds the frame directory (the index), the
 * sections, the section table and the footer; for a sealed image, the metadata MAC becomes the last section.
 *
 * @module
 */

import type { Sealer } from "../codecs/seal.ts";
import { checksum } from "./checksum.ts";
import { encodeDirectory, encodeFrameHeader, type FrameInfo } from "./frames.ts";
import { alignUp, FOOTER_LENGTH, FRAME_LENGTH } from "./format.ts";
import { encodeFooter } from "./footer.ts";
import type { HeaderFields } from "./header.ts";
import { encodeSectionTable, type SectionEntry } from "./sections.ts";
import { bytesPieces, metadataMac, type PieceSource, SEAL_SECTION } from "./sealing.ts";

/** What {@link encodeTail} needs to know of the image. */
export interface TailInput {
  /** Where the file ends before the tail. */
  pos: number;
  /** The directory entries of every frame written. */
  frames: readonly FrameInfo[];
  /** Every frame's table, in file order (sealed images). */
  tables?: PieceSource;
  /** The sections, in order (a sealed image's MAC section is replaced). */
  sections: Map<string, Uint8Array>;
  /** The header block's fields. */
  header: HeaderFields;
  /** Decoded bytes of data records. */
  dataBytes: number;
  /** For a sealed image: its sealer and the header block's digest. */
  seal?: { sealer: Sealer; digest: Uint8Array };
}

/** The tail's bytes and where they go. */
export interface Tail {
  /** File offset of the END frame. */
  offset: number;
  /** The END frame's header. */
  frameHeader: Uint8Array;
  /** The END frame's data: index, sections, section table, footer. */
  data: Uint8Array;
  /** Bytes of the whole file. */
  fileSize: number;
}

/**
 * Encode the tail of an image.
 *
 * @param input The frames, sections and header fields of the image.
 * @returns The END frame's header and data, where they go and the file's size.
 */
export async function encodeTail(input: TailInput): Promise<Tail> {
  const { sections, header } = input;
  const endAt = alignUp(input.pos, 8);
  const indexOffset = endAt + FRAME_LENGTH;
  const index = encodeDirectory(input.frames);
  if (input.seal) {
    const others = [...sections].filter(([n]) => n !== SEAL_SECTION).map(([name, data]) => ({
      name,
      data,
    }));
    const tables = input.tables ?? bytesPieces(new Uint8Array(0));
    const mac = await metadataMac(input.seal.sealer, input.seal.digest, index, tables, others);
    sections.delete(SEAL_SECTION);
    sections.set(SEAL_SECTION, mac);
  }
  const entries: SectionEntry[] = [];
  let at = indexOffset + index.length;
  for (const [name, data] of sections) {
    entries.push({ name, offset: at, length: data.length, checksum: checksum(data) });
    at = alignUp(at + data.length, 8);
  }
  const table = encodeSectionTable(entries);
  const fileSize = at + table.length + FOOTER_LENGTH;
  const tail = new Uint8Array(fileSize - indexOffset);
  tail.set(index, 0);
  for (const e of entries) tail.set(sections.get(e.name)!, e.offset - indexOffset);
  tail.set(table, at - indexOffset);
  const footer = encodeFooter({
    headerLength: header.headerLength,
    headerChecksum: header.headerChecksum,
    regionsOffset: header.regionsOffset,
    regionsLength: header.regionsLength,
    indexOffset,
    indexLength: index.length,
    indexChecksum: checksum(index),
    sectionsOffset: at,
    sectionsLength: table.length,
    sectionsChecksum: checksum(table),
    frameCount: input.frames.length,
    fileSize,
    dataBytes: input.dataBytes,
  });
  tail.set(footer, tail.length - FOOTER_LENGTH);
  const end: FrameInfo = {
    offset: endAt,
    isEnd: true,
    count: 0,
    segment: 0,
    start: 0n,
    end: 0n,
    dataLength: tail.length,
    tableChecksum: 0n,
    frameChecksum: 0n,
  };
  return { offset: endAt, frameHeader: encodeFrameHeader(end), data: tail, fileSize };
}
