# Install layout and the Debian package (CPack), included at the end of the
# root CMakeLists.txt.  With the /usr prefix, and always in the .deb (cpack
# installs with the /usr prefix whatever CMAKE_INSTALL_PREFIX the build has):
#
#   /usr/bin/fleetgw, /usr/bin/fleetgw-leafsim
#   /usr/share/fleetgw/web/*            the dashboard (web.static_dir)
#   /usr/share/fleetgw/openapi.json     (web.openapi_file)
#   /usr/share/fleetgw/aws/*            templates, policies and the rotation hook for the AWS setup
#   /usr/share/man/man8/fleetgw.8.gz, /usr/share/man/man5/fleetgw.json.5.gz
#   /usr/share/doc/fleetgw/             README.md, copyright (MIT), changelog.gz
#   /etc/fleetgw/fleetgw.json           the configuration (a conffile)
#   /lib/systemd/system/fleetgw.service
#   /usr/lib/sysusers.d/fleetgw.conf    the fleetgw system user
#
# With another prefix P (cmake --install without --prefix /usr) the files go
# under P, the configuration to P/etc/fleetgw, and the unit's ExecStart and the
# configuration's paths are rewritten to match.
include(GNUInstallDirs)

set(FLEETGW_SYSTEMD_UNIT_DIR "/lib/systemd/system" CACHE PATH
    "Directory of the systemd unit (absolute; Debian 12: /lib/systemd/system)")
set(FLEETGW_SHARE_REL "${CMAKE_INSTALL_DATADIR}/fleetgw")

# fleetgw-leafsim ships in the package (load tests on the box), so it is
# built even when the tests are not.
if(NOT FLEETGW_TESTS)
  add_subdirectory(tests/leaf)
endif()

install(TARGETS fleetgw RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY web/static/ DESTINATION ${FLEETGW_SHARE_REL}/web
        FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
install(FILES web/openapi.json DESTINATION ${FLEETGW_SHARE_REL})
install(FILES deploy/aws/claim-policy.json deploy/aws/device-policy.json
              deploy/aws/provisioning-template.json deploy/aws/rotation-template.json
              deploy/aws/rotation-hook.py deploy/aws/README.md
        DESTINATION ${FLEETGW_SHARE_REL}/aws)
install(FILES README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})

# The man pages and the Debian changelog, compressed as Debian wants them
# (gzip -n: no name or time stamp in the file, so the package is repeatable).
file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/deploy)
set(_fleetgw_gz)
foreach(_src docs/man/fleetgw.8 docs/man/fleetgw.json.5 deploy/debian/changelog)
  get_filename_component(_name ${_src} NAME)
  set(_out ${CMAKE_BINARY_DIR}/deploy/${_name}.gz)
  add_custom_command(OUTPUT ${_out}
    COMMAND gzip -9nc ${CMAKE_CURRENT_SOURCE_DIR}/${_src} > ${_out}
    DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/${_src} VERBATIM)
  list(APPEND _fleetgw_gz ${_out})
endforeach()
add_custom_target(fleetgw_docs ALL DEPENDS ${_fleetgw_gz})
install(FILES ${CMAKE_BINARY_DIR}/deploy/fleetgw.8.gz DESTINATION ${CMAKE_INSTALL_MANDIR}/man8)
install(FILES ${CMAKE_BINARY_DIR}/deploy/fleetgw.json.5.gz DESTINATION ${CMAKE_INSTALL_MANDIR}/man5)
install(FILES ${CMAKE_BINARY_DIR}/deploy/changelog.gz deploy/debian/copyright
        DESTINATION ${CMAKE_INSTALL_DOCDIR})

# The unit, the sysusers file and the configuration.  Their paths are those of
# the prefix the install runs with, decided at install time (not when the
# build was configured), so that cpack, which installs with its own prefix
# (/usr, CPACK_PACKAGING_INSTALL_PREFIX below), gets the package's layout
# whatever CMAKE_INSTALL_PREFIX the build has: /usr -> /etc/fleetgw and
# /usr/bin; any other prefix P -> P/etc/fleetgw and P/bin.  For /usr the
# replacements change nothing and the files are installed as they are.
#
# The configuration file has configuration-file semantics: an existing one is
# the operator's and is never overwritten; the new default goes next to it as
# fleetgw.json.dist.  (In a package build the staging tree is empty, so the
# file is always installed; dpkg then treats it as a conffile.)
install(CODE "
  set(_p \"\${CMAKE_INSTALL_PREFIX}\")
  if(_p STREQUAL \"/usr\" OR _p STREQUAL \"/\")
    set(_conf /etc/fleetgw)
  else()
    set(_conf \"\${_p}/etc/fleetgw\")
  endif()
  if(_p STREQUAL \"/\")
    set(_p /usr)
  endif()
  set(_gen \"${CMAKE_BINARY_DIR}/deploy/install\")
  file(READ \"${CMAKE_CURRENT_SOURCE_DIR}/deploy/fleetgw.service\" _unit)
  string(REPLACE /usr/bin/fleetgw \"\${_p}/bin/fleetgw\" _unit \"\${_unit}\")
  string(REPLACE /etc/fleetgw \"\${_conf}\" _unit \"\${_unit}\")
  string(REPLACE /usr/share/doc/fleetgw \"\${_p}/share/doc/fleetgw\" _unit \"\${_unit}\")
  file(WRITE \"\${_gen}/fleetgw.service\" \"\${_unit}\")
  file(READ \"${CMAKE_CURRENT_SOURCE_DIR}/deploy/fleetgw.example.json\" _json)
  string(REPLACE /usr/share/fleetgw \"\${_p}/share/fleetgw\" _json \"\${_json}\")
  string(REPLACE /etc/fleetgw \"\${_conf}\" _json \"\${_json}\")
  file(WRITE \"\${_gen}/fleetgw.json\" \"\${_json}\")

  file(INSTALL DESTINATION \"${FLEETGW_SYSTEMD_UNIT_DIR}\" TYPE FILE
       PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
       FILES \"\${_gen}/fleetgw.service\")
  file(INSTALL DESTINATION \"\${_p}/lib/sysusers.d\" TYPE FILE RENAME fleetgw.conf
       PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
       FILES \"${CMAKE_CURRENT_SOURCE_DIR}/deploy/fleetgw.sysusers\")

  set(_name fleetgw.json)
  if(EXISTS \"\$ENV{DESTDIR}\${_conf}/fleetgw.json\")
    message(STATUS \"Keeping the existing \$ENV{DESTDIR}\${_conf}/fleetgw.json; the new default is fleetgw.json.dist\")
    set(_name fleetgw.json.dist)
  endif()
  file(INSTALL DESTINATION \"\${_conf}\" TYPE FILE RENAME \${_name}
       PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
       FILES \"\${_gen}/fleetgw.json\")
")
# Re-run the configuration when either source changes (nothing is generated
# from them at configure time any more, but the install rules read them).
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS
             deploy/fleetgw.service deploy/fleetgw.example.json)

# ---- CPack: the .deb --------------------------------------------------------
# The maintainer and the homepage are placeholders until the project has
# public addresses: set them when building a release package
# (-DFLEETGW_MAINTAINER=... -DFLEETGW_HOMEPAGE=...).
set(FLEETGW_MAINTAINER "fleetgw maintainers <maintainers@fleetgw.invalid>" CACHE STRING
    "The .deb's Maintainer field")
set(FLEETGW_HOMEPAGE "https://fleetgw.invalid/" CACHE STRING "The .deb's Homepage field")
set(CPACK_GENERATOR "DEB")
set(CPACK_PACKAGE_NAME "fleetgw")
set(CPACK_PACKAGE_VERSION "${PROJECT_VERSION}")
set(CPACK_PACKAGE_CONTACT "${FLEETGW_MAINTAINER}")
set(CPACK_PACKAGE_HOMEPAGE_URL "${FLEETGW_HOMEPAGE}")
set(CPACK_RESOURCE_FILE_LICENSE "${CMAKE_CURRENT_SOURCE_DIR}/LICENSE")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "Fleet gateway: MQTT-SN leaves to one MQTT-over-TLS session each")
set(CPACK_PACKAGE_DESCRIPTION
    "fleetgw relays MQTT-SN v1.2 leaves (UDP) to an MQTT 3.1.1 broker, one upstream\nsession per leaf over TLS, and provisions each leaf exactly once (AWS IoT Fleet\nProvisioning or its own CA), with a REST API and a dashboard.")
# The package's own layout, whatever the build's prefix: cpack installs with
# this prefix (the install rules above decide /etc and the rewritten paths at
# install time from it).  Files under /etc and /lib are absolute
# destinations: stage them with DESTDIR.
set(CPACK_SET_DESTDIR ON)
set(CPACK_PACKAGING_INSTALL_PREFIX "/usr")
set(CPACK_INSTALL_PREFIX "/usr")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${FLEETGW_MAINTAINER}")
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "${FLEETGW_HOMEPAGE}")
set(CPACK_DEBIAN_PACKAGE_SECTION "net")
set(CPACK_DEBIAN_PACKAGE_PRIORITY "optional")
# The Debian 12 runtime libraries (lower bounds = the versions in bookworm).
set(CPACK_DEBIAN_PACKAGE_DEPENDS
    "libc6 (>= 2.36), libuv1 (>= 1.44), libwebsockets17 (>= 4.1.6), libssl3 (>= 3.0.0), libsqlite3-0 (>= 3.40), libcjson1 (>= 1.7.15), adduser | systemd")
# The registry is read with the sqlite3 CLI (README, "Configure and start").
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "sqlite3")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${CMAKE_CURRENT_SOURCE_DIR}/deploy/debian/conffiles
    ${CMAKE_CURRENT_SOURCE_DIR}/deploy/debian/postinst
    ${CMAKE_CURRENT_SOURCE_DIR}/deploy/debian/prerm
    ${CMAKE_CURRENT_SOURCE_DIR}/deploy/debian/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)
include(CPack)
