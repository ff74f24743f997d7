//! The app area at the start of the disk (`lockstep_guest_abi::linux`):
//! a header block with argv and envp, then the loadable prefix of the ELF.
//! The guest reads it at boot through virtio-blk, so the program's bytes
//! reach a replay or a backup as logged disk reads, like any other data.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use lockstep_guest_abi::linux::{
    APP_AREA_BYTES, APP_FIXED_BYTES, APP_HEADER_BYTES, APP_STRINGS_MAX, AppHeader,
};

/// Smallest file system the personality gets behind the app area.
pub const MIN_FS_BYTES: u64 = 4 << 20;

/// The environment every app starts with.
pub const ENV: [&str; 2] = ["HOME=/", "PATH=/bin:/usr/bin"];

/// Why the app area could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("an argument or environment string contains a NUL byte")]
    Nul,
    #[error("the arguments take {0} bytes; the app header holds {APP_STRINGS_MAX}")]
    TooManyArgs(usize),
    #[error(
        "the disk is {mib} MiB; an app needs at least {need} MiB (the app area and a file system)",
        need = (APP_AREA_BYTES + MIN_FS_BYTES) >> 20
    )]
    DiskTooSmall { mib: u64 },
    #[error("writing the app to the disk image {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The header block for `elf` (the loadable prefix) run as `argv`.
pub fn header_block(elf: &[u8], argv: &[String]) -> Result<Vec<u8>, ImageError> {
    let mut strings = Vec::new();
    for s in argv.iter().map(String::as_str).chain(ENV) {
        if s.contains('\0') {
            return Err(ImageError::Nul);
        }
        strings.extend_from_slice(s.as_bytes());
        strings.push(0);
    }
    if strings.len() > APP_STRINGS_MAX {
        return Err(ImageError::TooManyArgs(strings.len()));
    }
    let mut block = [0u8; APP_HEADER_BYTES];
    let mut header = AppHeader {
        header_crc: 0,
        elf_crc: crc32c::crc32c(elf),
        elf_len: elf.len() as u64,
        argc: argv.len() as u32,
        envc: ENV.len() as u32,
        strings_len: strings.len() as u32,
    };
    header.encode(&mut block);
    block[APP_FIXED_BYTES..APP_FIXED_BYTES + strings.len()].copy_from_slice(&strings);
    header.header_crc = crc32c::crc32c(&block);
    header.encode(&mut block);
    Ok(block.to_vec())
}

/// Writes header and ELF prefix at offset 0 of the image at `path` and
/// makes them durable; the file system behind the area is left alone.
pub fn write(path: &Path, header: &[u8], elf: &[u8]) -> Result<(), ImageError> {
    let err = |source| ImageError::Write {
        path: path.display().to_string(),
        source,
    };
    let file = OpenOptions::new().write(true).open(path).map_err(err)?;
    let size = file.metadata().map_err(err)?.len();
    if size < APP_AREA_BYTES + MIN_FS_BYTES {
        return Err(ImageError::DiskTooSmall { mib: size >> 20 });
    }
    file.write_all_at(header, 0).map_err(err)?;
    // Whole sectors: the guest reads the prefix rounded up.
    let mut body = elf.to_vec();
    body.resize(elf.len().next_multiple_of(512), 0);
    file.write_all_at(&body, APP_HEADER_BYTES as u64)
        .map_err(err)?;
    file.sync_data().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_carries_argv_env_and_crcs() {
        let elf = b"\x7fELF and some bytes";
        let argv = vec!["redis-server".to_string(), "--save".into(), String::new()];
        let block: [u8; APP_HEADER_BYTES] = header_block(elf, &argv).unwrap().try_into().unwrap();
        let h = AppHeader::decode(&block).unwrap();
        assert_eq!((h.argc, h.envc), (3, ENV.len() as u32));
        assert_eq!(h.elf_crc, crc32c::crc32c(elf));
        let mut zeroed = block;
        zeroed[8..12].fill(0);
        assert_eq!(h.header_crc, crc32c::crc32c(&zeroed));
        assert!(
            h.strings(&block)
                .unwrap()
                .starts_with(b"redis-server\0--save\0\0HOME=/\0")
        );
        assert!(matches!(
            header_block(elf, &["a\0b".to_string()]),
            Err(ImageError::Nul)
        ));
        assert!(matches!(
            header_block(elf, &["x".repeat(APP_STRINGS_MAX)]),
            Err(ImageError::TooManyArgs(_))
        ));
    }
}
