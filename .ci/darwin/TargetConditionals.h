/* CI only (.ci/cross): the one Apple SDK header ring's C code includes, so
 * that `cargo check --target *-apple-darwin` can run ring's build script with
 * Debian's clang and no macOS SDK. The objects are never linked; a real
 * macOS build uses the SDK's own header. Values as for macOS. */
#ifndef TARGETCONDITIONALS_STANDIN_H
#define TARGETCONDITIONALS_STANDIN_H
#define TARGET_OS_MAC 1
#define TARGET_OS_OSX 1
#define TARGET_OS_IPHONE 0
#define TARGET_OS_IOS 0
#define TARGET_OS_TV 0
#define TARGET_OS_WATCH 0
#define TARGET_OS_SIMULATOR 0
#define TARGET_OS_EMBEDDED 0
#endif
