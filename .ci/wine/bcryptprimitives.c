/* Test-only stand-in for bcryptprimitives.dll, for running the Windows build
 * under Debian 12's wine 8.0 (.ci/cross). Not shipped: real Windows (8 and
 * later) has this DLL.
 *
 * Rust's standard library on Windows gets its random bytes (HashMap keys)
 * from ProcessPrng in bcryptprimitives.dll, which wine 8.0 does not have, so
 * every Rust .exe fails to start there. This DLL exports ProcessPrng on top
 * of RtlGenRandom (SystemFunction036 in advapi32.dll), which wine has.
 *
 * Build: x86_64-w64-mingw32-gcc -shared -O2 -o bcryptprimitives.dll \
 *            bcryptprimitives.c -ladvapi32
 * and put the DLL beside the .exe (the loader looks there first). */
#include <windows.h>

/* RtlGenRandom; ntsecapi.h names it, declared here to need no more. */
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

/* BOOL ProcessPrng(PBYTE pbData, SIZE_T cbData): fills the buffer, and is
 * documented never to fail; RtlGenRandom takes at most a ULONG at a time. */
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
