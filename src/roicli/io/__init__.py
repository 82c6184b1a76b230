"""Reading feature maps and RoIs, writing outputs atomically. No math beyond format conversion."""
