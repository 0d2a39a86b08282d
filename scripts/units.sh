# Sourced by install.sh and uninstall.sh: which systemd units gatewayd's install owns.
# Expects root (DESTDIR), PREFIX and UNITDIR to be set.

# installed_by_us NAME: an existing unit an earlier install wrote. It lists the units it owns in
# $PREFIX/share/units; one installed before that list was kept runs what is under PREFIX.
installed_by_us() {
    local dest=$root$UNITDIR/$1 owned=$root$PREFIX/share/units
    [ -f "$dest" ] || return 1
    if [ -f "$owned" ]; then
        grep -qxF "$1" "$owned"
    else
        grep -qF "$PREFIX/" "$dest"
    fi
}
