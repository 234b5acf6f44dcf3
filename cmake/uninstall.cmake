# uninstall.cmake - removes every file an install wrote, as listed in its
# install_manifest.txt (honours DESTDIR as the install did).
# Usage: cmake -P uninstall.cmake BUILD/install_manifest.txt
set(manifest "${CMAKE_ARGV3}")
if(NOT EXISTS "${manifest}")
  message(FATAL_ERROR "no install manifest: ${manifest}")
endif()
file(STRINGS "${manifest}" files)
set(removed 0)
foreach(f ${files})
  set(path "$ENV{DESTDIR}${f}")
  if(EXISTS "${path}" OR IS_SYMLINK "${path}")
    file(REMOVE "${path}")
    math(EXPR removed "${removed} + 1")
  endif()
endforeach()
message(STATUS "uninstall: removed ${removed} file(s)")
