export T_PKGS_FLAG=${T_PKGS_FLAG:-on}
