//! Reading compressed files (rotated logs, compressed configs) as streams.

use std::io::Read;

/// A compression format recognised by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (`.gz`), including multi-member files.
    Gzip,
    /// xz (`.xz`).
    Xz,
    /// Zstandard (`.zst`).
    Zstd,
}

impl Compression {
    /// The format `data` starts with, if any.
    pub fn detect(data: &[u8]) -> Option<Self> {
        if data.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if data.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Some(Compression::Xz)
        } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else {
            None
        }
    }

    /// The format's usual name.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        }
    }
}

/// Why compressed data could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    /// The stream is corrupt or truncated.
    #[error("{format} data is corrupt: {source}")]
    Corrupt {
        /// The format.
        format: &'static str,
        /// What the decoder said.
        source: std::io::Error,
    },
}

/// A decoder of `format` reading `input` as it needs it, so a compressed file is
/// never held whole: the caller bounds what it reads from it.
pub fn decoder<'a>(
    format: Compression,
    input: impl Read + 'a,
) -> Result<Box<dyn Read + 'a>, DecompressError> {
    Ok(match format {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(input)),
        Compression::Zstd => match zstd::stream::read::Decoder::new(input) {
            Ok(d) => Box::new(d),
            Err(source) => {
                return Err(DecompressError::Corrupt {
                    format: format.name(),
                    source,
                })
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Decompresses `data`, at most `limit` bytes of output: (bytes, cut at the limit).
    fn decompress(data: &[u8], limit: u64) -> Result<Option<(Vec<u8>, bool)>, DecompressError> {
        let Some(format) = Compression::detect(data) else {
            return Ok(None);
        };
        let mut out = Vec::new();
        decoder(format, data)?
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|source| DecompressError::Corrupt {
                format: format.name(),
                source,
            })?;
        let cut = out.len() as u64 > limit;
        out.truncate(limit as usize);
        Ok(Some((out, cut)))
    }

    #[test]
    fn each_format_round_trips() {
        let text = b"a rotated log line\n".repeat(100);
        let gz = gzip(&text);
        let xz = {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&text).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&text[..], 1).unwrap();
        for (bytes, format) in [
            (gz, Compression::Gzip),
            (xz, Compression::Xz),
            (zst, Compression::Zstd),
        ] {
            assert_eq!(Compression::detect(&bytes), Some(format));
            let (data, cut) = decompress(&bytes, 1 << 20).unwrap().unwrap();
            assert_eq!(data, text);
            assert!(!cut);
        }
    }

    #[test]
    fn output_is_cut_at_the_limit() {
        let bomb = gzip(&vec![0u8; 10 << 20]);
        let (data, cut) = decompress(&bomb, 1 << 20).unwrap().unwrap();
        assert_eq!(data.len(), 1 << 20);
        assert!(cut);
    }

    #[test]
    fn corrupt_data_is_an_error_and_plain_data_is_none() {
        let mut gz = gzip(b"hello world, hello world");
        gz.truncate(gz.len() - 6);
        assert!(decompress(&gz, 1 << 20).is_err());
        assert!(decompress(b"plain text", 1 << 20).unwrap().is_none());
    }
}
