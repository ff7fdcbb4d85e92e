"""Library of the liver MONAI Label app."""
