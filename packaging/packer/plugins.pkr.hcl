# Kept in its own file: Packer >= 1.7 needs it to download the amazon plugin, while Debian's
# Packer 1.6.6 (used by the offline `packer validate` test) predates `required_plugins` and has the
# amazon builders built in. The test validates kv-ami.pkr.hcl without this file.
packer {
  required_plugins {
    amazon = {
      version = ">= 1.3.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}
