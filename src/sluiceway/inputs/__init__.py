"""Getting samples into arrays: request bodies, images, downloads."""
