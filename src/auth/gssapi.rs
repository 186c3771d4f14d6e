//! Negotiate tokens (SPNEGO, RFC 4178, as HTTP carries them, RFC 4559) from
//! the system's GSSAPI library, opened at run time.
//!
//! Owns: finding and opening the library (MIT's `libgssapi_krb5.so.2`, else
//! Heimdal's `libgssapi.so.3`) once per process, the few calls Negotiate
//! needs, declared by hand after MIT's `gssapi.h` (x86-64 and every LP64
//! Linux: `OM_uint32` is 32 bits, `size_t` and pointers 64), and the wording
//! of GSSAPI's errors. Never does: sockets, logging, headers, base64, or
//! threads; the caller decides where a call runs.
//!
//! **Every call may block**: the first token of a context asks the KDC for a
//! service ticket unless the credentials cache already holds one, which
//! takes a network round trip (seconds, or the library's own timeout when
//! the KDC does not answer). Call it off the reactor thread.
//!
//! Credentials are the library's defaults for the user running the program:
//! the cache named by `KRB5CCNAME` (what `kinit` filled), or, with MIT, a
//! client keytab named by `KRB5_CLIENT_KTNAME` from which the library gets a
//! ticket itself; `KRB5_CONFIG` names the krb5.conf. Nothing here takes a
//! password.
//!
//! Flags: no `GSS_C_MUTUAL_FLAG`. curl asks for mutual authentication in its
//! SPNEGO code and then checks the server's token when one comes back; a
//! tunnel cannot use that proof: the proxy's `200` to `CONNECT` ends HTTP on
//! the connection, and proxies (squid's `negotiate_kerberos_auth`, most
//! appliances) accept the first token without sending one back, so asking
//! for it would only promise a check that never happens. No
//! `GSS_C_DELEG_FLAG` either: the user's ticket-granting ticket is never
//! handed to a proxy. `GSS_C_REPLAY_FLAG` is asked for, as curl does; it
//! only concerns per-message tokens, which Negotiate over HTTP never uses.
//! No channel bindings (HTTP proxies do not check them).
//!
//! The environment variable [`LIB_ENV`] names the one library to open
//! instead of the usual names: the tests use it to show how the program
//! behaves where the library is missing, and a host with the library in an
//! unusual place can use it too.

use std::ffi::{c_int, c_void};
use std::fmt::Write as _;
use std::ptr;
use std::sync::OnceLock;

/// Names the only library [`load`] tries (a file name searched by the
/// dynamic loader, or a path), instead of [`LIBRARIES`].
pub const LIB_ENV: &str = "HTTPTUNNELING_GSSAPI_LIB";

/// What [`load`] tries, in order: on Linux MIT Kerberos (Debian/Ubuntu
/// `libgssapi-krb5-2`, Fedora `krb5-libs`), then Heimdal (`libgssapi3-heimdal`);
/// other systems' names are in [`crate::sys::GSSAPI_LIBRARIES`].
pub const LIBRARIES: &[&str] = crate::sys::GSSAPI_LIBRARIES;

// ---------------------------------------------------------------------------
// The C interface (RFC 2744, as MIT's gssapi.h spells it on LP64 Linux)
// ---------------------------------------------------------------------------

#[allow(non_camel_case_types)]
type OM_uint32 = u32;

/// `gss_buffer_desc`: `{ size_t length; void *value; }`.
#[repr(C)]
struct gss_buffer_desc {
    length: usize,
    value: *mut c_void,
}

impl gss_buffer_desc {
    /// `GSS_C_EMPTY_BUFFER`.
    fn empty() -> gss_buffer_desc {
        gss_buffer_desc {
            length: 0,
            value: ptr::null_mut(),
        }
    }
}

/// `gss_OID_desc`: `{ OM_uint32 length; void *elements; }` (the DER contents
/// octets of the OID, without tag and length).
#[repr(C)]
struct gss_OID_desc {
    length: OM_uint32,
    elements: *mut c_void,
}

#[allow(non_camel_case_types)]
type gss_OID = *mut gss_OID_desc;
/// Opaque handles: pointers to structures private to the library.
#[allow(non_camel_case_types)]
type gss_name_t = *mut c_void;
#[allow(non_camel_case_types)]
type gss_ctx_id_t = *mut c_void;
#[allow(non_camel_case_types)]
type gss_cred_id_t = *mut c_void;
#[allow(non_camel_case_types)]
type gss_channel_bindings_t = *mut c_void;

type ImportNameFn = unsafe extern "C" fn(
    minor_status: *mut OM_uint32,
    input_name_buffer: *mut gss_buffer_desc,
    input_name_type: gss_OID,
    output_name: *mut gss_name_t,
) -> OM_uint32;

type InitSecContextFn = unsafe extern "C" fn(
    minor_status: *mut OM_uint32,
    claimant_cred_handle: gss_cred_id_t,
    context_handle: *mut gss_ctx_id_t,
    target_name: gss_name_t,
    mech_type: gss_OID,
    req_flags: OM_uint32,
    time_req: OM_uint32,
    input_chan_bindings: gss_channel_bindings_t,
    input_token: *mut gss_buffer_desc,
    actual_mech_type: *mut gss_OID,
    output_token: *mut gss_buffer_desc,
    ret_flags: *mut OM_uint32,
    time_rec: *mut OM_uint32,
) -> OM_uint32;

type ReleaseBufferFn =
    unsafe extern "C" fn(minor_status: *mut OM_uint32, buffer: *mut gss_buffer_desc) -> OM_uint32;

type ReleaseNameFn =
    unsafe extern "C" fn(minor_status: *mut OM_uint32, name: *mut gss_name_t) -> OM_uint32;

type DeleteSecContextFn = unsafe extern "C" fn(
    minor_status: *mut OM_uint32,
    context_handle: *mut gss_ctx_id_t,
    output_token: *mut gss_buffer_desc,
) -> OM_uint32;

type DisplayStatusFn = unsafe extern "C" fn(
    minor_status: *mut OM_uint32,
    status_value: OM_uint32,
    status_type: c_int,
    mech_type: gss_OID,
    message_context: *mut OM_uint32,
    status_string: *mut gss_buffer_desc,
) -> OM_uint32;

const GSS_C_GSS_CODE: c_int = 1;
const GSS_C_MECH_CODE: c_int = 2;
const GSS_C_REPLAY_FLAG: OM_uint32 = 4;
const GSS_S_COMPLETE: OM_uint32 = 0;
/// A supplementary bit: the context needs another token from the peer.
const GSS_S_CONTINUE_NEEDED: OM_uint32 = 1;
/// The routine error "unspecified failure; the minor code says more".
const GSS_S_FAILURE: OM_uint32 = 13 << 16;

/// `GSS_ERROR()`: a calling error (bits 24-31) or a routine error (16-23).
fn gss_error(major: OM_uint32) -> bool {
    major & 0xffff_0000 != 0
}

/// `GSS_C_NT_HOSTBASED_SERVICE`, 1.2.840.113554.1.2.1.4: names such as
/// `HTTP@proxy.example.org`.
const NT_HOSTBASED_SERVICE: &[u8] = b"\x2a\x86\x48\x86\xf7\x12\x01\x02\x01\x04";
/// SPNEGO, 1.3.6.1.5.5.2: what `Negotiate` carries (with Kerberos inside).
const SPNEGO_MECHANISM: &[u8] = b"\x2b\x06\x01\x05\x05\x02";
/// Kerberos V5, 1.2.840.113554.1.2.2: asked directly only to learn why
/// SPNEGO found no credentials.
const KRB5_MECHANISM: &[u8] = b"\x2a\x86\x48\x86\xf7\x12\x01\x02\x02";
/// `GSS_S_NO_CRED`: no usable credentials.
const GSS_S_NO_CRED: OM_uint32 = 7 << 16;

/// An OID descriptor for `bytes`, to pass by pointer for one call. The
/// libraries only read it (the pointer is non-const in the C prototypes for
/// history's sake) and copy what they keep.
fn oid(bytes: &'static [u8]) -> gss_OID_desc {
    gss_OID_desc {
        length: bytes.len() as OM_uint32,
        elements: bytes.as_ptr() as *mut c_void,
    }
}

// ---------------------------------------------------------------------------
// The library
// ---------------------------------------------------------------------------

/// The GSSAPI library, open, and the functions Negotiate calls.
pub struct Gssapi {
    import_name: ImportNameFn,
    init_sec_context: InitSecContextFn,
    release_buffer: ReleaseBufferFn,
    release_name: ReleaseNameFn,
    delete_sec_context: DeleteSecContextFn,
    display_status: DisplayStatusFn,
    /// What was opened (for the log).
    name: String,
    /// Keeps the functions above mapped; never closed before them (fields
    /// drop after use ends, and the process-wide copy is never dropped).
    _library: libloading::Library,
}

impl std::fmt::Debug for Gssapi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gssapi").field("name", &self.name).finish()
    }
}

static LOADED: OnceLock<Result<Gssapi, String>> = OnceLock::new();

/// The process's GSSAPI library, opened at the first call (from [`LIB_ENV`]
/// when set, else the first of [`LIBRARIES`] the dynamic loader finds), or
/// why there is none; later calls return the same answer without trying
/// again. Opening only maps the library: no file is read, no KDC asked.
pub fn load() -> Result<&'static Gssapi, String> {
    LOADED
        .get_or_init(|| match std::env::var_os(LIB_ENV) {
            Some(name) if !name.is_empty() => Gssapi::open(&name.to_string_lossy()),
            _ => Gssapi::open_first(LIBRARIES),
        })
        .as_ref()
        .map_err(Clone::clone)
}

impl Gssapi {
    /// Opens the first of `names` that loads and has every function.
    fn open_first(names: &[&str]) -> Result<Gssapi, String> {
        let mut why = Vec::new();
        for name in names {
            match Gssapi::open(name) {
                Ok(api) => return Ok(api),
                Err(e) => why.push(e),
            }
        }
        Err(why.join("; "))
    }

    /// Opens the library `name` (a file name the dynamic loader searches
    /// for, or a path) and looks up the functions; no other process-wide
    /// state. The error names the library and why it could not be used,
    /// e.g. `the GSSAPI library libgssapi_krb5.so.2 is not installed
    /// (libgssapi_krb5.so.2: cannot open shared object file: No such file
    /// or directory)`.
    pub fn open(name: &str) -> Result<Gssapi, String> {
        // SAFETY: opening runs the library's initialisers. MIT's and
        // Heimdal's only register error tables and set up locks; they are
        // made to be loaded into any process, at any time, from any thread.
        let library = unsafe { libloading::Library::new(name) }
            .map_err(|e| format!("the GSSAPI library {name} is not installed ({e})"))?;
        // SAFETY (each lookup): the type given is the function's prototype
        // from RFC 2744 / MIT's gssapi.h (the FFI declarations above, same
        // in Heimdal's header); the pointer copied out of the symbol stays
        // valid as long as `library`, which the Gssapi keeps.
        macro_rules! function {
            ($symbol:literal) => {
                *unsafe { library.get(concat!($symbol, "\0").as_bytes()) }
                    .map_err(|e| format!("the GSSAPI library {name} has no {}: {e}", $symbol))?
            };
        }
        Ok(Gssapi {
            import_name: function!("gss_import_name"),
            init_sec_context: function!("gss_init_sec_context"),
            release_buffer: function!("gss_release_buffer"),
            release_name: function!("gss_release_name"),
            delete_sec_context: function!("gss_delete_sec_context"),
            display_status: function!("gss_display_status"),
            name: name.to_owned(),
            _library: library,
        })
    }

    /// The library's name as it was opened, e.g. `libgssapi_krb5.so.2`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The first (and, with Kerberos, usually only) Negotiate token for the
    /// service `HTTP@service_host`, with the user's default credentials: the
    /// bytes to base64 into `Proxy-Authorization: Negotiate ...`. BLOCKS:
    /// may ask the KDC for a ticket. The context is dropped: use
    /// [`Gssapi::begin`] to answer a proxy that sends a token back in a 407.
    ///
    /// The error carries the library's words for the major and minor
    /// status, e.g. `No credentials were supplied, or the credentials were
    /// unavailable or inaccessible: No Kerberos credentials available
    /// (default cache: FILE:/tmp/krb5cc_1000)`.
    pub fn initial_token(&self, service_host: &str) -> Result<Vec<u8>, String> {
        self.begin(service_host).map(|(_context, token)| token)
    }

    /// Starts a security context for `HTTP@service_host` and returns it with
    /// its first token. BLOCKS, like [`Gssapi::initial_token`]. The context
    /// answers a proxy's `Negotiate <token>` with
    /// [`SecContext::continue_token`].
    pub fn begin(&self, service_host: &str) -> Result<(SecContext<'_>, Vec<u8>), String> {
        let target = self.import_service_name(service_host)?;
        let mut context = SecContext {
            api: self,
            handle: ptr::null_mut(),
            target,
            complete: false,
            mechanism: SPNEGO_MECHANISM,
        };
        let token = match context.step(None) {
            Ok(token) => token,
            Err(Failure { major, text }) if major & 0xffff_0000 == GSS_S_NO_CRED => {
                return Err(self.why_no_credentials(service_host).unwrap_or(text));
            }
            Err(failure) => return Err(failure.text),
        };
        if token.is_empty() {
            return Err(format!(
                "GSSAPI gave no first token for HTTP@{service_host}"
            ));
        }
        Ok((context, token))
    }

    /// SPNEGO says only "cannot find mechanisms to negotiate" when no
    /// mechanism has credentials; Kerberos asked directly says why (e.g. `No
    /// Kerberos credentials available (default cache: FILE:/tmp/krb5cc_0)`).
    /// Without credentials this call cannot reach the KDC. `None` if it does
    /// not fail after all.
    fn why_no_credentials(&self, service_host: &str) -> Option<String> {
        let target = self.import_service_name(service_host).ok()?;
        let mut context = SecContext {
            api: self,
            handle: ptr::null_mut(),
            target,
            complete: false,
            mechanism: KRB5_MECHANISM,
        };
        context.step(None).err().map(|f| f.text)
    }

    /// `HTTP@host` as a GSSAPI host-based service name.
    fn import_service_name(&self, host: &str) -> Result<gss_name_t, String> {
        if host.is_empty() || host.contains('\0') {
            return Err(format!(
                "{host:?} is not a host name for a service principal"
            ));
        }
        let mut text = format!("HTTP@{host}").into_bytes();
        let mut buffer = gss_buffer_desc {
            length: text.len(),
            value: text.as_mut_ptr().cast(),
        };
        let mut name_type = oid(NT_HOSTBASED_SERVICE);
        let mut name: gss_name_t = ptr::null_mut();
        let mut minor = 0;
        // SAFETY: every pointer is to a live local of the declared type;
        // `buffer` describes `text`, which outlives the call (the library
        // copies the name); on success `name` is a handle this code
        // releases (SecContext's Drop, or right below on error paths).
        let major =
            unsafe { (self.import_name)(&mut minor, &mut buffer, &mut name_type, &mut name) };
        if gss_error(major) {
            return Err(format!(
                "service name HTTP@{host}: {}",
                self.status(major, minor)
            ));
        }
        Ok(name)
    }

    /// The library's text for a major status and its minor status, joined:
    /// `MAJOR: MINOR`, the major part left out when it is only "unspecified
    /// failure, see the minor code", the minor when it is 0.
    fn status(&self, major: OM_uint32, minor: OM_uint32) -> String {
        let minor_text = if minor != 0 {
            self.display(minor, GSS_C_MECH_CODE)
        } else {
            String::new()
        };
        let major_text = if major & 0xffff_0000 == GSS_S_FAILURE && !minor_text.is_empty() {
            String::new()
        } else {
            self.display(major, GSS_C_GSS_CODE)
        };
        match (major_text.is_empty(), minor_text.is_empty()) {
            (false, false) => format!("{major_text}: {minor_text}"),
            (false, true) => major_text,
            (true, false) => minor_text,
            (true, true) => format!("GSSAPI error (major {major:#x}, minor {minor:#x})"),
        }
    }

    /// Every message `gss_display_status` has for `code`, joined by "; ".
    fn display(&self, code: OM_uint32, kind: c_int) -> String {
        let mut text = String::new();
        let mut message_context: OM_uint32 = 0;
        // A status has a few messages at most; the bound guards against a
        // library that never clears the context.
        for _ in 0..8 {
            let mut minor = 0;
            let mut buffer = gss_buffer_desc::empty();
            // SAFETY: pointers to live locals of the declared types;
            // GSS_C_NO_OID (null) lets the library find the mechanism that
            // set a minor code. A buffer it fills is released below.
            let major = unsafe {
                (self.display_status)(
                    &mut minor,
                    code,
                    kind,
                    ptr::null_mut(),
                    &mut message_context,
                    &mut buffer,
                )
            };
            if gss_error(major) {
                break;
            }
            // SAFETY: the buffer was filled by the library, or is empty.
            let message = unsafe { self.take_buffer(&mut buffer) };
            let message = String::from_utf8_lossy(&message);
            let message = message.trim().trim_end_matches('.').trim_end();
            if !message.is_empty() {
                if !text.is_empty() {
                    text.push_str("; ");
                }
                let _ = write!(text, "{message}");
            }
            if message_context == 0 {
                break;
            }
        }
        text
    }

    /// Copies the bytes of a buffer the library allocated and releases it.
    ///
    /// # Safety
    /// `buffer` is empty (null value) or was filled by this library and not
    /// released yet.
    unsafe fn take_buffer(&self, buffer: &mut gss_buffer_desc) -> Vec<u8> {
        if buffer.value.is_null() {
            return Vec::new();
        }
        // SAFETY: the library made `value` point to `length` bytes it owns
        // until gss_release_buffer.
        let bytes = unsafe {
            std::slice::from_raw_parts(buffer.value as *const u8, buffer.length).to_vec()
        };
        let mut minor = 0;
        // SAFETY: the buffer came from this library and is released once;
        // the call nulls `value`.
        unsafe { (self.release_buffer)(&mut minor, buffer) };
        bytes
    }
}

/// One SPNEGO security context: the client's side of one Negotiate
/// handshake (one tunnel's hop). Deleted on drop.
pub struct SecContext<'a> {
    api: &'a Gssapi,
    /// `GSS_C_NO_CONTEXT` (null) until the first call.
    handle: gss_ctx_id_t,
    target: gss_name_t,
    complete: bool,
    /// SPNEGO (Kerberos only for [`Gssapi::why_no_credentials`]).
    mechanism: &'static [u8],
}

/// A failed call: its major status and the library's words.
struct Failure {
    major: OM_uint32,
    text: String,
}

// SAFETY: MIT's and Heimdal's libraries are thread-safe, and a context or a
// name is not tied to the thread that made it; it must only not be used by
// two threads at once, which `&mut self` on every call ensures (the type is
// not Sync). So a context may be started on one worker thread and continued
// on another.
unsafe impl Send for SecContext<'_> {}

impl std::fmt::Debug for SecContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecContext")
            .field("complete", &self.complete)
            .finish()
    }
}

impl SecContext<'_> {
    /// Whether GSSAPI called the context established (nothing more to
    /// receive). SPNEGO without mutual authentication still waits for the
    /// acceptor's final token after the first one, so this is false after
    /// [`Gssapi::begin`] even though a proxy usually accepts that token.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Feeds the token the proxy sent (`Proxy-Authenticate: Negotiate
    /// <token>`, base64-decoded) and returns the token to send next, or
    /// `None` when the context is complete and there is nothing to send.
    /// BLOCKS, like [`Gssapi::initial_token`].
    pub fn continue_token(&mut self, token: &[u8]) -> Result<Option<Vec<u8>>, String> {
        if self.complete {
            return Err("the Negotiate context is already complete".to_owned());
        }
        if token.is_empty() {
            return Err("the proxy sent an empty Negotiate token".to_owned());
        }
        let out = self.step(Some(token)).map_err(|f| f.text)?;
        Ok((!out.is_empty()).then_some(out))
    }

    /// One `gss_init_sec_context` call: `input` is the peer's token (none
    /// for the first call); returns the output token (maybe empty).
    fn step(&mut self, input: Option<&[u8]>) -> Result<Vec<u8>, Failure> {
        let api = self.api;
        let mut input_copy = input.map(<[u8]>::to_vec).unwrap_or_default();
        let mut input_buffer = gss_buffer_desc {
            length: input_copy.len(),
            value: if input_copy.is_empty() {
                ptr::null_mut()
            } else {
                input_copy.as_mut_ptr().cast()
            },
        };
        let mut mechanism = oid(self.mechanism);
        let mut output = gss_buffer_desc::empty();
        let mut minor = 0;
        // SAFETY: pointers to live locals or fields of the declared types;
        // `handle` is GSS_C_NO_CONTEXT or a context from an earlier call on
        // this target; `target` came from gss_import_name; the input buffer
        // describes `input_copy` (alive through the call), or is
        // GSS_C_EMPTY_BUFFER; null for GSS_C_NO_CREDENTIAL (the default
        // credentials), GSS_C_NO_CHANNEL_BINDINGS and the outputs not
        // wanted (actual_mech_type, ret_flags, time_rec), all allowed by
        // RFC 2744. The output buffer is released below.
        let major = unsafe {
            (api.init_sec_context)(
                &mut minor,
                ptr::null_mut(),
                &mut self.handle,
                self.target,
                &mut mechanism,
                GSS_C_REPLAY_FLAG,
                0,
                ptr::null_mut(),
                &mut input_buffer,
                ptr::null_mut(),
                &mut output,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        // SAFETY: `output` is empty or filled by this call.
        let token = unsafe { api.take_buffer(&mut output) };
        if gss_error(major) {
            return Err(Failure {
                major,
                text: api.status(major, minor),
            });
        }
        self.complete = major & GSS_S_CONTINUE_NEEDED == 0 && major & 0xffff_0000 == GSS_S_COMPLETE;
        Ok(token)
    }
}

impl Drop for SecContext<'_> {
    fn drop(&mut self) {
        let mut minor = 0;
        if !self.handle.is_null() {
            // SAFETY: a context this library made, deleted once (the call
            // nulls the handle); GSS_C_NO_BUFFER (null): no token wanted.
            unsafe { (self.api.delete_sec_context)(&mut minor, &mut self.handle, ptr::null_mut()) };
        }
        if !self.target.is_null() {
            // SAFETY: a name from gss_import_name, released once.
            unsafe { (self.api.release_name)(&mut minor, &mut self.target) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DER contents octets of a dotted OID (base-128 arcs, the first two
    /// folded into one), to check the constants above independently.
    fn der(dotted: &str) -> Vec<u8> {
        let arcs: Vec<u64> = dotted.split('.').map(|a| a.parse().unwrap()).collect();
        let mut out = Vec::new();
        let mut encode = |mut v: u64| {
            let mut groups = vec![(v & 0x7f) as u8];
            v >>= 7;
            while v > 0 {
                groups.push((v & 0x7f) as u8 | 0x80);
                v >>= 7;
            }
            out.extend(groups.iter().rev());
        };
        encode(arcs[0] * 40 + arcs[1]);
        for &arc in &arcs[2..] {
            encode(arc);
        }
        out
    }

    #[test]
    fn oids_are_spnego_and_hostbased_service() {
        assert_eq!(SPNEGO_MECHANISM, der("1.3.6.1.5.5.2"));
        assert_eq!(NT_HOSTBASED_SERVICE, der("1.2.840.113554.1.2.1.4"));
    }

    #[test]
    fn ffi_layout_matches_lp64_gssapi_h() {
        // MIT gssapi.h: size_t then a pointer; OM_uint32 then a pointer
        // (4 bytes of padding).
        assert_eq!(std::mem::size_of::<gss_buffer_desc>(), 16);
        assert_eq!(std::mem::size_of::<gss_OID_desc>(), 16);
        let desc = oid(SPNEGO_MECHANISM);
        let offset = ptr::addr_of!(desc.elements) as usize - ptr::addr_of!(desc) as usize;
        assert_eq!(offset, 8);
    }

    #[test]
    fn error_bits() {
        assert!(!gss_error(GSS_S_COMPLETE));
        assert!(!gss_error(GSS_S_CONTINUE_NEEDED));
        assert!(gss_error(GSS_S_FAILURE));
        // GSS_S_NO_CRED (7 << 16) and a calling error (1 << 24).
        assert!(gss_error(7 << 16));
        assert!(gss_error(1 << 24));
    }

    #[test]
    fn a_missing_library_is_an_error_naming_it() {
        let err = Gssapi::open("/nonexistent/libgssapi_krb5.so.2").unwrap_err();
        assert!(
            err.starts_with(
                "the GSSAPI library /nonexistent/libgssapi_krb5.so.2 is not installed ("
            ),
            "{err}"
        );
        let err = Gssapi::open_first(&["/nonexistent/a.so", "/nonexistent/b.so"]).unwrap_err();
        assert!(err.contains("a.so") && err.contains("b.so"), "{err}");
    }

    #[test]
    fn a_library_without_gssapi_is_an_error_naming_the_function() {
        // libc is mapped in every dynamically linked process, and a static
        // build opens the shared one from the system path.
        let err = Gssapi::open("libc.so.6").unwrap_err();
        assert!(err.contains("has no gss_import_name"), "{err}");
    }

    /// The system's library: its own words for a status code, and a bad
    /// service host refused before any call. MIT's libgssapi-krb5-2 is
    /// installed wherever krb5-user is (`.ci/test` installs it).
    #[test]
    fn the_system_library_opens_and_describes_statuses() {
        let api = Gssapi::open_first(LIBRARIES)
            .expect("the GSSAPI library (apt-get install libgssapi-krb5-2)");
        // GSS_S_NO_CRED.
        let text = api.status(7 << 16, 0);
        assert!(text.contains("credentials"), "{text}");
        let text = api.status(GSS_S_FAILURE, 0);
        assert!(text.contains("Unspecified GSS failure"), "{text}");
        let err = api.initial_token("").unwrap_err();
        assert!(err.contains("not a host name"), "{err}");
        let err = api.initial_token("a\0b").unwrap_err();
        assert!(err.contains("not a host name"), "{err}");
    }
}
