# Install layout and the Debian package (CPack), included at the end of the
# root CMakeLists.txt.  Packages are built with CMAKE_INSTALL_PREFIX=/usr:
#
#   /usr/bin/fleetgw, /usr/bin/fleetgw-leafsim
#   /usr/share/fleetgw/web/*            the dashboard (web.static_dir)
#   /usr/share/fleetgw/openapi.json     (web.openapi_file)
#   /usr/share/fleetgw/aws/*            templates, policies and the rotation hook for the AWS setup
#   /etc/fleetgw/fleetgw.json           the configuration (a conffile)
#   /lib/systemd/system/fleetgw.service
#   /usr/lib/sysusers.d/fleetgw.conf    the fleetgw system user
#
# With another prefix the unit's ExecStart and the configuration's paths are
# rewritten to match it; /etc is GNUInstallDirs' choice for the /usr prefix.
include(GNUInstallDirs)

set(FLEETGW_SYSTEMD_UNIT_DIR "/lib/systemd/system" CACHE PATH
    "Directory of the systemd unit (absolute; Debian 12: /lib/systemd/system)")
set(FLEETGW_SHARE_REL "${CMAKE_INSTALL_DATADIR}/fleetgw")
set(FLEETGW_SHARE_FULL "${CMAKE_INSTALL_FULL_DATADIR}/fleetgw")
set(FLEETGW_CONF_DIR "${CMAKE_INSTALL_FULL_SYSCONFDIR}/fleetgw")

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

# The unit and the configuration, with the paths of this prefix (for /usr
# the replacements change nothing and the files are installed as they are).
file(READ deploy/fleetgw.service _fleetgw_unit)
string(REPLACE "/usr/bin/fleetgw" "${CMAKE_INSTALL_FULL_BINDIR}/fleetgw" _fleetgw_unit "${_fleetgw_unit}")
string(REPLACE "/etc/fleetgw" "${FLEETGW_CONF_DIR}" _fleetgw_unit "${_fleetgw_unit}")
string(REPLACE "/usr/share/doc/fleetgw" "${CMAKE_INSTALL_FULL_DOCDIR}" _fleetgw_unit "${_fleetgw_unit}")
file(GENERATE OUTPUT ${CMAKE_BINARY_DIR}/deploy/fleetgw.service CONTENT "${_fleetgw_unit}")
file(READ deploy/fleetgw.example.json _fleetgw_conf)
string(REPLACE "/usr/share/fleetgw" "${FLEETGW_SHARE_FULL}" _fleetgw_conf "${_fleetgw_conf}")
string(REPLACE "/etc/fleetgw" "${FLEETGW_CONF_DIR}" _fleetgw_conf "${_fleetgw_conf}")
file(GENERATE OUTPUT ${CMAKE_BINARY_DIR}/deploy/fleetgw.json CONTENT "${_fleetgw_conf}")
# Re-run the configuration when either source changes.
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS
             deploy/fleetgw.service deploy/fleetgw.example.json)

install(FILES ${CMAKE_BINARY_DIR}/deploy/fleetgw.service DESTINATION ${FLEETGW_SYSTEMD_UNIT_DIR})
install(FILES deploy/fleetgw.sysusers DESTINATION lib/sysusers.d RENAME fleetgw.conf)

# The configuration file has configuration-file semantics: an existing one is
# the operator's and is never overwritten; the new default goes next to it as
# fleetgw.json.dist.  (In a package build the staging tree is empty, so the
# file is always installed; dpkg then treats it as a conffile.)
install(CODE "
  set(_dst \"\$ENV{DESTDIR}${FLEETGW_CONF_DIR}/fleetgw.json\")
  set(_name fleetgw.json)
  if(EXISTS \"\${_dst}\")
    message(STATUS \"Keeping the existing \${_dst}; the new default is fleetgw.json.dist\")
    set(_name fleetgw.json.dist)
  endif()
  file(INSTALL DESTINATION \"${FLEETGW_CONF_DIR}\" TYPE FILE RENAME \${_name}
       PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
       FILES \"${CMAKE_BINARY_DIR}/deploy/fleetgw.json\")
")

# ---- CPack: the .deb --------------------------------------------------------
set(CPACK_GENERATOR "DEB")
set(CPACK_PACKAGE_NAME "fleetgw")
set(CPACK_PACKAGE_VERSION "${PROJECT_VERSION}")
set(CPACK_PACKAGE_CONTACT "fleetgw maintainers <fleetgw@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "Fleet gateway: MQTT-SN leaves to one MQTT-over-TLS session each")
set(CPACK_PACKAGE_DESCRIPTION
    "fleetgw relays MQTT-SN v1.2 leaves (UDP) to an MQTT 3.1.1 broker, one upstream\nsession per leaf over TLS, and provisions each leaf exactly once (AWS IoT Fleet\nProvisioning or its own CA), with a REST API and a dashboard.")
# Files under /etc and /lib are absolute destinations: stage them with DESTDIR.
set(CPACK_SET_DESTDIR ON)
set(CPACK_PACKAGING_INSTALL_PREFIX "${CMAKE_INSTALL_PREFIX}")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_PACKAGE_SECTION "net")
set(CPACK_DEBIAN_PACKAGE_PRIORITY "optional")
# The Debian 12 runtime libraries (lower bounds = the versions in bookworm).
set(CPACK_DEBIAN_PACKAGE_DEPENDS
    "libc6 (>= 2.36), libuv1 (>= 1.44), libwebsockets17 (>= 4.1.6), libssl3 (>= 3.0.0), libsqlite3-0 (>= 3.40), libcjson1 (>= 1.7.15), adduser | systemd")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${CMAKE_CURRENT_SOURCE_DIR}/deploy/debian/conffiles
    ${CMAKE_CURRENT_SOURCE_DIR}/deploy/debian/postinst
    ${CMAKE_CURRENT_SOURCE_DIR}/deploy/debian/prerm
    ${CMAKE_CURRENT_SOURCE_DIR}/deploy/debian/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)
include(CPack)
