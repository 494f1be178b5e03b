"""Install rules for the robot_llm_planner ament_python package."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'robot_llm_planner'

setup(
    name=PACKAGE,
    version='0.1.0',
    # The robot install: the planner package only (training/ and test/ stay in the checkout).
    packages=find_packages(include=[PACKAGE, PACKAGE + '.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.launch.py')),
        ('share/' + PACKAGE + '/config', glob('config/*')),
    ],
    install_requires=['setuptools', 'PyYAML'],
    zip_safe=True,
    maintainer='robot_llm_planner maintainers',
    maintainer_email='maintainers@robot-llm-planner.dev',
    description='LLM action planner for home robots (ROS 2 node, LLaMA-Factory fine-tuned Qwen).',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'planner_node = robot_llm_planner.ros.planner_node:main',
            'plan_client = robot_llm_planner.ros.plan_client:main',
            'plan_executor = robot_llm_planner.ros.plan_executor:main',
        ],
    },
)
