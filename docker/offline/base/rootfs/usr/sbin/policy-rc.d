#!/bin/sh
# No init system in a container: package maintainer scripts must not start services
# (invoke-rc.d asks this script; 101 = action forbidden). Same as Debian's images.
exit 101
