#!/bin/busybox sh
# The initramfs's /init (`tiommu run` writes it into the archive): mounts, loads the modules the
# runner packed, checks the IOMMU's BAR0 is where the ACPI table says, runs the guest program
# and powers off. Its results go to ttyS1, where no kernel message interleaves with them.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
echo 32 > /proc/sys/vm/nr_hugepages
stty -F /dev/ttyS1 raw -echo 2>/dev/null
# Each program /init starts costs a fork and an exec under TCG (tens of milliseconds), so what it
# can do with the shell's builtins it does so: the command line is read once and matched by word.
read -r cmdline </proc/cmdline
has() { case " $cmdline " in *" $1 "*) return 0 ;; esac; return 1; }
# The third serial port is the daemon's control channel (tiommu run --inject): JSON lines both ways.
has tiommu.inject=1 && stty -F /dev/ttyS2 raw -echo 2>/dev/null
# The functions by their ids (abi::pci; a test keeps these in step), wherever they sit
# (`tiommu qemu-args --first-slot` moves them): the secure IOMMU, the virtio-iommu, the IOAT engine.
iommu=/nonexistent viommu=/nonexistent ioat=/nonexistent
for d in /sys/bus/pci/devices/*; do
    read -r v <"$d/vendor"; read -r i <"$d/device"
    case "$v:$i" in
        0x1234:0x7101) iommu="$d" ;;
        0x1af4:0x1057) viommu="$d" ;;
        0x8086:0x2021) ioat="$d" ;;
    esac
done
# The IVRS (DMAR) named BAR0's address before boot (tiommu.ivrs_mmio=, tiommu.dmar_mmio=);
# amd_iommu (intel_iommu) drives the registers it found there.
for w in $cmdline; do
    case "$w" in
        tiommu.ivrs_mmio=*|tiommu.dmar_mmio=*)
            table="${w%%_mmio=*}" table="${table#tiommu.}" want="${w#*=}" have=""
            read -r have _ <"$iommu/resource"
            if [ "$((want))" != "$((have))" ]; then
                echo "tiommu-guest: FATAL: the $table table names the IOMMU registers at $want but ${iommu##*/0000:}'s BAR0 is at $have" | tee /dev/ttyS1
                poweroff -f
            fi ;;
    esac
done
# The model has no interrupt remapping, so type1 must be told MSIs are not isolated (built in,
# the kernel command line tells it and iommufd).
if [ -f /lib/modules/order ]; then
    while read -r m; do
        args=""; [ "$m" = vfio_iommu_type1 ] && args=allow_unsafe_interrupts=1
        insmod "/lib/modules/$m.ko" $args || echo "tiommu-guest: insmod $m failed"
    done </lib/modules/order
fi
if has tiommu.viommu=1 || has tiommu.amdvi=1 || has tiommu.vtd=1; then
    sleep 0.2
    dmesg | grep -iE 'viot|virtio|iommu|AMD-Vi|DMAR' | sed 's/^/tiommu-guest: dmesg: /'
    has tiommu.viommu=1 &&
    echo "tiommu-guest: ${viommu##*/0000:} driver $(basename "$(readlink "$viommu/driver")")"
fi
if [ -e "$ioat" ]; then
    # ioatdma's probe runs its self-test (a 2000-byte copy on channel 0) before it binds.
    for _ in $(seq 50); do [ -e "$ioat/driver" ] && break; sleep 0.1; done
    { dmesg | grep -iE 'ioat|dca' | sed 's/^/tiommu-guest: dmesg: /'
    echo "tiommu-guest: ${ioat##*/0000:} driver $(basename "$(readlink "$ioat/driver")" 2>/dev/null), $(ls -d "$ioat"/dma/dma*chan* 2>/dev/null | wc -l) DMA channels, iommu_group $(basename "$(readlink "$ioat/iommu_group")" 2>/dev/null)"
    grep -E 'ioat|vfio' /proc/interrupts | sed 's/^/tiommu-guest: interrupts: /'
    } | tee /dev/ttyS1
fi
# tiommu run --shell: a shell on the console instead of the scenarios (the guest program is
# /bin/tiommu-guest-tests); the guest powers off when it exits.
if has tiommu.shell=1; then
    echo "tiommu-guest: shell (the scenarios: /bin/tiommu-guest-tests; exit powers off)"
    setsid cttyhack sh
    poweroff -f
fi
read -r up _ </proc/uptime
echo "tiommu-guest: start $up"
{ /bin/tiommu-guest-tests; echo "tiommu-guest: exit $?"; } 2>&1 | tee /dev/ttyS1
# What Linux's amd_iommu (intel_iommu) made of the model's event log, for the runner to check.
if has tiommu.amdvi=1; then
    dmesg | grep 'AMD-Vi' | sed 's/^/tiommu-guest: dmesg: /' >/dev/ttyS1
    grep AMD-Vi /proc/interrupts | sed 's/^/tiommu-guest: interrupts: /' >/dev/ttyS1
fi
if has tiommu.vtd=1; then
    dmesg | grep 'DMAR' | sed 's/^/tiommu-guest: dmesg: /' >/dev/ttyS1
    grep DMAR /proc/interrupts | sed 's/^/tiommu-guest: interrupts: /' >/dev/ttyS1
fi
# tiommu run --dump: the daemon writes guest RAM (the scenarios' tables still in it), its
# registers and the RMP, and answers on the control channel once the files are complete.
if has tiommu.dump=1; then
    stty -F /dev/ttyS2 raw -echo 2>/dev/null
    exec 3<>/dev/ttyS2
    echo '{"cmd":"dump"}' >&3
    # The dump's answer names its files (or says why not); any line left from the scenarios'
    # exchanges is skipped.
    answer="no answer"
    while read -t 120 -r line <&3; do
        case "$line" in *'"files"'*|*'"ok":false'*) answer="$line"; break ;; esac
    done
    echo "tiommu-guest: dump: $answer" | tee /dev/ttyS1
fi
poweroff -f
