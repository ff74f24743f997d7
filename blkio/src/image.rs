//! The disk image: opened so that a completed write is durable.
//!
//! The device offers no volatile write cache (no `VIRTIO_BLK_F_FLUSH`), so
//! every write must be on stable storage when its completion reaches the
//! guest: the image is opened `O_DSYNC`, and `O_DIRECT` keeps the host page
//! cache out of the way. File systems without `O_DIRECT` (tmpfs before
//! Linux 6.6, some FUSE) get `O_DSYNC` alone, and the image says so.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::BlkError;
use crate::buf::AlignedBuf;
use crate::request::SECTOR_SIZE;

/// How to open (or create) an image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskOpenOptions {
    /// Create the image with this many bytes (a multiple of 512) if it does
    /// not exist. An existing image is used as it is, whatever its size.
    pub create_size: Option<u64>,
    /// Open read-only (the device must then be configured read-only).
    pub read_only: bool,
}

/// An open disk image.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    path: PathBuf,
    capacity_sectors: u64,
    direct: bool,
    read_only: bool,
}

/// Chunk of zeros written while creating an image.
const CREATE_CHUNK: usize = 1 << 20;
/// Images at least this big log their creation progress.
const CREATE_PROGRESS_MIN: u64 = 256 << 20;

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

impl DiskImage {
    /// Opens `path` read-write (or read-only), `O_DIRECT | O_DSYNC`, creating
    /// and zero-filling it first if it is absent and `create_size` is given.
    pub fn open(path: impl AsRef<Path>, opts: DiskOpenOptions) -> Result<DiskImage, BlkError> {
        let path = path.as_ref().to_path_buf();
        if let Some(size) = opts.create_size
            && !path.exists()
        {
            create(&path, size)?;
        }
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BlkError::NotFound { path });
            }
            Err(e) if errno(&e) == libc::EACCES => {
                return Err(BlkError::Unreadable { path, source: e });
            }
            Err(source) => {
                return Err(BlkError::Io {
                    path,
                    what: "stat",
                    source,
                });
            }
        };
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            Some("directory")
        } else if ft.is_char_device() {
            Some("character device")
        } else if ft.is_fifo() {
            Some("FIFO")
        } else if ft.is_socket() {
            Some("socket")
        } else {
            None
        };
        if let Some(kind) = kind {
            return Err(BlkError::NotAFile { path, kind });
        }

        let (mut file, mut direct) = open_file(&path, opts.read_only, true)?;
        let size = file.seek(SeekFrom::End(0)).map_err(|source| BlkError::Io {
            path: path.clone(),
            what: "size",
            source,
        })?;
        if size == 0 {
            return Err(BlkError::Empty { path });
        }
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(BlkError::BadSize { path, size });
        }
        if direct {
            // O_DIRECT accepted at open time does not mean 512-byte IO works:
            // a 4Kn device refuses it. Guests issue 512-byte-aligned IO, so
            // probe exactly that and fall back if it is refused.
            let mut probe = AlignedBuf::zeroed(SECTOR_SIZE as usize);
            let at = if size >= 2 * SECTOR_SIZE {
                SECTOR_SIZE
            } else {
                0
            };
            match file.read_at(&mut probe, at) {
                Ok(_) => {}
                Err(e) if errno(&e) == libc::EINVAL => {
                    tracing::warn!(
                        path = %path.display(),
                        "O_DIRECT refuses 512-byte IO on this image; using O_DSYNC through the page cache"
                    );
                    (file, direct) = open_file(&path, opts.read_only, false)?;
                }
                Err(source) => {
                    return Err(BlkError::Io {
                        path,
                        what: "read",
                        source,
                    });
                }
            }
        }
        Ok(DiskImage {
            file,
            path,
            capacity_sectors: size / SECTOR_SIZE,
            direct,
            read_only: opts.read_only,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// True if the image is open with `O_DIRECT` (false: `O_DSYNC` only).
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// True if opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The image path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (the engine submits IO on its descriptor).
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Opens the image with `O_DSYNC` and, if `direct`, `O_DIRECT`; falls back to
/// no `O_DIRECT` on `EINVAL`. Returns the file and whether it is direct.
fn open_file(path: &Path, read_only: bool, direct: bool) -> Result<(File, bool), BlkError> {
    let mut o = OpenOptions::new();
    o.read(true).write(!read_only);
    let flags = libc::O_DSYNC | libc::O_CLOEXEC | if direct { libc::O_DIRECT } else { 0 };
    o.custom_flags(flags);
    match o.open(path) {
        Ok(f) => Ok((f, direct)),
        Err(e) if direct && errno(&e) == libc::EINVAL => {
            tracing::warn!(
                path = %path.display(),
                "the file system does not support O_DIRECT; using O_DSYNC through the page cache"
            );
            open_file(path, read_only, false)
        }
        Err(e) if errno(&e) == libc::EROFS => Err(BlkError::ReadOnly {
            path: path.to_path_buf(),
            reason: "read-only file system",
        }),
        Err(e) if matches!(errno(&e), libc::EACCES | libc::EPERM) => {
            // Tell "cannot write" from "cannot read at all".
            if !read_only && File::open(path).is_ok() {
                Err(BlkError::ReadOnly {
                    path: path.to_path_buf(),
                    reason: "no write permission",
                })
            } else {
                Err(BlkError::Unreadable {
                    path: path.to_path_buf(),
                    source: e,
                })
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BlkError::NotFound {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(BlkError::Io {
            path: path.to_path_buf(),
            what: "open",
            source,
        }),
    }
}

/// Creates a zero-filled image of `size` bytes. Writing real zeros (not
/// `fallocate`) means later `O_DSYNC` writes overwrite allocated, written
/// blocks and need no metadata update of their own. The image is built under
/// a temporary name and renamed, so a crash never leaves a short image that
/// looks finished.
fn create(path: &Path, size: u64) -> Result<(), BlkError> {
    let err = |source| BlkError::Create {
        path: path.to_path_buf(),
        source,
    };
    if size == 0 || !size.is_multiple_of(SECTOR_SIZE) {
        return Err(BlkError::BadSize {
            path: path.to_path_buf(),
            size,
        });
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".creating");
    let tmp = PathBuf::from(tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(err)?;
    let zeros = vec![0u8; CREATE_CHUNK];
    let mut written = 0u64;
    let mut next_report = 10;
    let big = size >= CREATE_PROGRESS_MIN;
    if big {
        tracing::info!(path = %path.display(), size, "creating disk image (writing zeros)");
    }
    while written < size {
        let n = (size - written).min(CREATE_CHUNK as u64) as usize;
        if let Err(e) = f.write_all(&zeros[..n]) {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        written += n as u64;
        if big && written * 100 / size >= next_report {
            tracing::info!(path = %path.display(), "creating disk image: {next_report}%");
            next_report += 10;
        }
    }
    let finish = f
        .sync_all()
        .and_then(|()| std::fs::rename(&tmp, path))
        .and_then(|()| sync_parent(path));
    if let Err(e) = finish {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

/// Makes the rename durable.
fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}
